/* startup.c - the start-up code of a bare Cortex-M4F/M7 image, no vendor SDK: the vector table,
   a reset handler that enables the FPU, copies .data from flash, zeroes .bss and calls main(), a
   SysTick counter for measuring, and output and exit through semihosting (qemu -semihosting, or a
   debugger on a real board; without one, replace fw_write with the board's UART). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "startup.h"

extern uint32_t __data_start[], __data_end[], __data_load[], __bss_start[], __bss_end[], __stack_top[];
int main(void);
void fw_reset(void);
static void fw_fault(void);
static void fw_systick(void);

/* Vector table: the initial stack pointer, then the handlers (Cortex-M exceptions 1-15). */
__attribute__((section(".vectors"), used)) static const uintptr_t fw_vectors[16] = {
    (uintptr_t)__stack_top, (uintptr_t)fw_reset, (uintptr_t)fw_fault, (uintptr_t)fw_fault, (uintptr_t)fw_fault,
    (uintptr_t)fw_fault,    (uintptr_t)fw_fault, 0, 0, 0, 0, (uintptr_t)fw_fault, (uintptr_t)fw_fault, 0,
    (uintptr_t)fw_fault,    (uintptr_t)fw_systick};

#define REG(a) (*(volatile uint32_t *)(a))
#define SCB_CPACR 0xE000ED88u  /* coprocessor access control: CP10/CP11 are the FPU */
#define SYST_CSR 0xE000E010u   /* SysTick control and status */
#define SYST_RVR 0xE000E014u   /* reload value */
#define SYST_CVR 0xE000E018u   /* current value */

static int semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void fw_write(const char *s) { semihost(0x04, s); } /* SYS_WRITE0 */

void fw_exit(int code) { /* SYS_EXIT: ApplicationExit is a clean exit, anything else an error */
    semihost(0x18, (const void *)(uintptr_t)(code == 0 ? 0x20026u : 0x20023u));
    for (;;) {}
}

static void fw_fault(void) {
    fw_write("fault: a Cortex-M exception other than reset or SysTick was taken\n");
    fw_exit(1);
}

/* SysTick counts down from FW_SYSTICK_PERIOD - 1 at the core clock; every wrap is counted here. */
static volatile uint32_t fw_wraps;
static void fw_systick(void) {
    if (++fw_wraps > FW_MAX_WRAPS) {
        fw_write("stopped: the run took longer than its guard (FW_MAX_WRAPS SysTick periods)\n");
        fw_exit(1);
    }
}

uint64_t fw_ticks(void) {
    uint32_t w, v;
    do {
        w = fw_wraps;
        v = REG(SYST_CVR);
    } while (w != fw_wraps);
    return (uint64_t)w * FW_SYSTICK_PERIOD + (FW_SYSTICK_PERIOD - 1u - v);
}

void fw_reset(void) {
#ifdef __ARM_FP
    REG(SCB_CPACR) |= 0xFu << 20; /* full access to CP10 and CP11 before any floating-point code */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    memcpy(__data_start, __data_load, (size_t)((char *)__data_end - (char *)__data_start));
    memset(__bss_start, 0, (size_t)((char *)__bss_end - (char *)__bss_start));
    REG(SYST_RVR) = FW_SYSTICK_PERIOD - 1u;
    REG(SYST_CVR) = 0;
    REG(SYST_CSR) = 7; /* core clock, interrupt on wrap, enabled */
    while (REG(SYST_CVR) == 0) {} /* the first reload, which is not a wrap */
    fw_exit(main());
}
