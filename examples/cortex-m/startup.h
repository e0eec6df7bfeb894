/* startup.h - what startup.c gives the program: output, exit, and a tick counter. */
#ifndef FW_STARTUP_H
#define FW_STARTUP_H
#include <stdint.h>
#ifndef FW_SYSTICK_PERIOD
#define FW_SYSTICK_PERIOD 0x1000000u /* ticks between SysTick interrupts, at most 2^24 */
#endif
#ifndef FW_MAX_WRAPS
/* The guard against a hang: the program stops itself after this many SysTick periods (of 2^24
   ticks by default). On qemu -M mps2-an500 -icount shift=0 a tick is 40 instructions (the 25 MHz core clock
   against 1 ns per instruction), so 16 periods are about 10.7 billion instructions; one inference
   of the bundled model takes about 0.25 billion. */
#define FW_MAX_WRAPS 16
#endif
void fw_write(const char *s);   /* a NUL-terminated string to the host */
void fw_exit(int code);         /* end the program: 0 success, else failure */
uint64_t fw_ticks(void);        /* SysTick ticks since reset */
#endif
