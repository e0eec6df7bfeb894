#!/usr/bin/env node
// bench_ort.js - time an ONNX model with onnxruntime-node (CPU), for tools/bench.py.
//
//   node tools/bench_ort.js MODEL.onnx [--batch N] [--size H W] [--channels C] [--threads N]
//        [--runs N] [--warmup N] [--no-spin] [--module DIR] [--json]
//
// --threads N   intraOpNumThreads (interOpNumThreads is 1, execution mode sequential)
// --no-spin     session.intra_op.allow_spinning = "0" (idle pool threads sleep instead of spinning)
// --module DIR  where to look for onnxruntime-node (a folder holding node_modules/, or the
//               package folder itself); default: Node's usual lookup
// --json        print one JSON object (create_ms, median_ms, best_ms, peak_rss_kb, ...)
//
// The input is seeded pseudo-random float32 in [-1, 1), NCHW; graphOptimizationLevel 'all'.
// Timed runs follow the warm-up runs; median and best are over the timed runs only.
// Exit codes: 0 ok, 2 bad usage, 3 onnxruntime-node not found, 4 session or run failed.
'use strict';

const path = require('path');

function usage(msg) {
  if (msg) process.stderr.write('bench_ort.js: ' + msg + '\n');
  process.stderr.write('usage: node bench_ort.js MODEL.onnx [--batch N] [--size H W] [--channels C] ' +
                       '[--threads N] [--runs N] [--warmup N] [--no-spin] [--module DIR] [--json]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = {model: null, batch: 1, h: 224, w: 224, c: 3, threads: 1, runs: 10, warmup: 2, spin: true,
             module: null, json: false};
  const int = (s, name) => {
    const v = Number(s);
    if (!Number.isInteger(v) || v < 0) usage('bad value for ' + name + ': ' + s);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const need = (n) => { if (i + n >= argv.length) usage(a + ' needs ' + n + ' value(s)'); };
    if (a === '--batch') { need(1); o.batch = int(argv[++i], a); }
    else if (a === '--size') { need(2); o.h = int(argv[++i], a); o.w = int(argv[++i], a); }
    else if (a === '--channels') { need(1); o.c = int(argv[++i], a); }
    else if (a === '--threads') { need(1); o.threads = int(argv[++i], a); }
    else if (a === '--runs') { need(1); o.runs = int(argv[++i], a); }
    else if (a === '--warmup') { need(1); o.warmup = int(argv[++i], a); }
    else if (a === '--no-spin') o.spin = false;
    else if (a === '--module') { need(1); o.module = argv[++i]; }
    else if (a === '--json') o.json = true;
    else if (a === '-h' || a === '--help') usage();
    else if (!a.startsWith('-') && !o.model) o.model = a;
    else usage('unexpected argument ' + a);
  }
  if (!o.model) usage('no model given');
  if (o.batch < 1 || o.runs < 1 || o.threads < 0) usage('batch and runs must be >= 1');
  return o;
}

function loadOrt(dir) {
  const tries = [];
  if (dir) {
    tries.push(() => require(require.resolve('onnxruntime-node', {paths: [path.resolve(dir)]})));
    tries.push(() => require(path.resolve(dir)));
  }
  tries.push(() => require('onnxruntime-node'));
  let last = null;
  for (const t of tries) {
    try { return t(); } catch (e) { last = e; }
  }
  throw last;
}

function ortVersion(dir) {
  try {
    const p = dir ? require.resolve('onnxruntime-node/package.json', {paths: [path.resolve(dir)]})
                  : require.resolve('onnxruntime-node/package.json');
    return require(p).version;
  } catch (e) {
    return null;
  }
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

async function main() {
  const o = parseArgs(process.argv.slice(2));
  let ort;
  try {
    ort = loadOrt(o.module);
  } catch (e) {
    const msg = 'onnxruntime-node not found: ' + (e && e.message ? e.message.split('\n')[0] : e);
    if (o.json) console.log(JSON.stringify({error: msg}));
    else process.stderr.write(msg + '\n');
    process.exit(3);
  }
  const opts = {
    executionProviders: ['cpu'],
    intraOpNumThreads: o.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  };
  // Nested keys are joined with '.' by the binding: session.intra_op.allow_spinning.
  if (!o.spin) opts.extra = {session: {intra_op: {allow_spinning: '0'}}};

  let session, createMs, times = [];
  try {
    let t0 = nowMs();
    session = await ort.InferenceSession.create(o.model, opts);
    createMs = nowMs() - t0;
    // seeded LCG, the same recipe as `lmv bench` (values in [-1, 1)); generated directly into a
    // Float32Array we own, so there is no Buffer pooling / byteOffset pitfall here
    const n = o.batch * o.c * o.h * o.w;
    const x = new Float32Array(n);
    let seed = 12345 >>> 0;
    for (let i = 0; i < n; i++) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      x[i] = ((seed >>> 8) & 0xFFFF) / 32768.0 - 1.0;
    }
    const feeds = {};
    feeds[session.inputNames[0]] = new ort.Tensor('float32', x, [o.batch, o.c, o.h, o.w]);
    for (let i = -o.warmup; i < o.runs; i++) {
      t0 = nowMs();
      const out = await session.run(feeds);
      const dt = nowMs() - t0;
      if (i >= 0) times.push(dt);
      for (const k of Object.keys(out)) if (out[k].dispose) out[k].dispose();
    }
  } catch (e) {
    const msg = 'onnxruntime failed: ' + (e && e.message ? e.message.split('\n')[0] : e);
    if (o.json) console.log(JSON.stringify({error: msg}));
    else process.stderr.write(msg + '\n');
    process.exit(4);
  }
  times.sort((a, b) => a - b);
  const r = times.length;
  const median = r % 2 ? times[(r - 1) / 2] : 0.5 * (times[r / 2 - 1] + times[r / 2]);
  const res = {
    engine: 'onnxruntime-node', ort_version: ortVersion(o.module), node_version: process.version,
    model: path.basename(o.model), batch: o.batch, h: o.h, w: o.w, threads: o.threads, spin: o.spin,
    warmup: o.warmup, runs: r, create_ms: +createMs.toFixed(3), median_ms: +median.toFixed(3),
    best_ms: +times[0].toFixed(3), times_ms: times.map((t) => +t.toFixed(3)),
    peak_rss_kb: process.resourceUsage().maxRSS,
  };
  if (session.release) await session.release();
  if (o.json) console.log(JSON.stringify(res));
  else {
    console.log(`model     ${o.model}  (onnxruntime-node ${res.ort_version}, ${o.threads} thread(s)` +
                `${o.spin ? '' : ', no spinning'})`);
    console.log(`session   created in ${res.create_ms.toFixed(1)} ms`);
    console.log(`latency   median ${res.median_ms.toFixed(2)} ms, best ${res.best_ms.toFixed(2)} ms over ${r} runs` +
                ` (batch ${o.batch}, ${o.h}x${o.w})`);
    console.log(`peak RSS  ${(res.peak_rss_kb / 1e3).toFixed(1)} MB`);
  }
}

main();
