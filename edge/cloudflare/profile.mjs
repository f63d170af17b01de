// A CPU profile from inside workerd's isolates, through the inspector (the DevTools protocol
// that `wrangler dev` uses for its profiler): V8's sampling profiler sees every JavaScript and
// WebAssembly frame by name, which `perf` of the workerd process cannot (JIT code has no
// symbols there without a V8 flag that miniflare does not pass).
//
//   node --experimental-websocket edge/cloudflare/profile.mjs <inspector port> <seconds> <out.txt> [worker ...]
//
// run.mjs opens the inspector when EDGE_INSPECTOR_PORT is set. Workers default to the edge
// worker and miniflare's entry worker (`core:user:edge`, `core:entry`): the entry worker routes
// every request to ours in local runs and is not there on Cloudflare. Writes, per worker, the
// busy samples by kind (our WebAssembly, the wasm-bindgen glue, workerd's APIs and V8's
// builtins, native time outside any frame, GC) and the functions with the most self samples;
// the raw profiles go beside it as `<out>.<worker>.cpuprofile` (DevTools opens them). Node 20
// needs --experimental-websocket.
import { writeFileSync } from "node:fs";

const [port, secs, out, ...named] = process.argv.slice(2);
if (!port || !secs || !out) {
  console.error("usage: profile.mjs <inspector port> <seconds> <out.txt> [worker ...]");
  process.exit(2);
}
const workers = named.length ? named : ["core:user:edge", "core:entry"];

function session(worker) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/${worker}`);
  let next = 1;
  const waiting = new Map();
  ws.addEventListener("message", (e) => {
    const msg = JSON.parse(e.data);
    const done = waiting.get(msg.id);
    if (!done) return;
    waiting.delete(msg.id);
    if (msg.error) done.reject(new Error(`${worker}: ${JSON.stringify(msg.error)}`));
    else done.resolve(msg.result);
  });
  const opened = new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("error", () => reject(new Error(`${worker}: inspector refused`)), { once: true });
  });
  const call = async (method, params = {}) => {
    await opened;
    const id = next++;
    return new Promise((resolve, reject) => {
      waiting.set(id, { resolve, reject });
      ws.send(JSON.stringify({ id, method, params }));
    });
  };
  return { call, close: () => ws.close() };
}

function kind(frame) {
  const f = frame.functionName;
  if (f === "(idle)") return "idle";
  if (f === "(program)") return "native, outside any JavaScript frame";
  if (f === "(garbage collector)") return "GC";
  if (frame.url.startsWith("wasm://")) return "WebAssembly (our Rust)";
  // Functions without a script are workerd's APIs (fetch, Request, Headers, timers: C++ bound
  // to JavaScript) and V8's builtins.
  if (frame.url === "") return "workerd APIs and V8 builtins";
  return `JavaScript: ${frame.url.split("/").pop()}`;
}

// Self samples per node. A sample is taken only while this isolate runs, so counts (not the
// time between samples, which spans other isolates' turns on the same thread) measure it.
function summarise(worker, profile, intervalUs) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  for (const id of profile.samples) self.set(id, (self.get(id) ?? 0) + 1);
  const kinds = new Map();
  const fns = new Map();
  let total = 0;
  for (const [id, n] of self) {
    const frame = byId.get(id).callFrame;
    if (frame.functionName === "(root)") continue;
    const k = kind(frame);
    if (k === "idle") continue;
    total += n;
    kinds.set(k, (kinds.get(k) ?? 0) + n);
    const where = k.startsWith("WebAssembly") ? "wasm" : frame.url.split("/").pop() || k;
    const name = `${frame.functionName || "(anonymous)"}  [${where}]`;
    fns.set(name, (fns.get(name) ?? 0) + n);
  }
  const wall = (profile.endTime - profile.startTime) / 1e6;
  const pct = (n) => ((100 * n) / Math.max(total, 1)).toFixed(1).padStart(5);
  const lines = [
    `== ${worker}: ${total} busy samples every ${intervalUs} µs over ${wall.toFixed(1)} s ` +
      `(about ${((total * intervalUs) / 1e6).toFixed(2)} s of this isolate's time)`,
    "by kind (% of busy samples):",
  ];
  for (const [k, n] of [...kinds].sort((a, b) => b[1] - a[1])) lines.push(`  ${pct(n)} %  ${k}`);
  lines.push("functions by self samples (% of busy samples):");
  for (const [name, n] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, 40)) {
    lines.push(`  ${pct(n)} %  ${name}`);
  }
  return lines.join("\n");
}

const INTERVAL_US = 250;
const sessions = workers.map((w) => [w, session(w)]);
for (const [, s] of sessions) {
  await s.call("Profiler.enable");
  await s.call("Profiler.setSamplingInterval", { interval: INTERVAL_US });
  await s.call("Profiler.start");
}
await new Promise((r) => setTimeout(r, Number(secs) * 1000));
const parts = [];
for (const [w, s] of sessions) {
  const { profile } = await s.call("Profiler.stop");
  writeFileSync(`${out}.${w.replaceAll(":", "_")}.cpuprofile`, JSON.stringify(profile));
  parts.push(summarise(w, profile, INTERVAL_US));
  s.close();
}
writeFileSync(out, parts.join("\n\n") + "\n");
console.log(parts.join("\n\n"));
process.exit(0);
