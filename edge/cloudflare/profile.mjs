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
// self time by kind (our WebAssembly, JavaScript, native: workerd and V8 outside JS, GC, idle)
// and the functions with the most self time; the raw profiles go beside it as
// `<out>.<worker>.cpuprofile` (DevTools opens them). Node 20 needs --experimental-websocket.
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
  if (f === "(program)") return "native (workerd, V8 outside JS)";
  if (f === "(garbage collector)") return "GC";
  if (frame.url.startsWith("wasm://")) return "WebAssembly";
  return "JavaScript";
}

// Self time per node from the sample stream (timeDeltas are µs between samples).
function summarise(worker, profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i + 1] ?? 0;
    self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + dt);
  }
  const kinds = new Map();
  const fns = new Map();
  let total = 0;
  for (const [id, us] of self) {
    const frame = byId.get(id).callFrame;
    if (frame.functionName === "(root)") continue;
    total += us;
    const k = kind(frame);
    kinds.set(k, (kinds.get(k) ?? 0) + us);
    const file = frame.url.split("/").pop() || "";
    const name = `${frame.functionName || "(anonymous)"}  [${k === "WebAssembly" ? "wasm" : file || k}]`;
    fns.set(name, (fns.get(name) ?? 0) + us);
  }
  const busy = total - (kinds.get("idle") ?? 0);
  const pct = (us, of) => ((100 * us) / Math.max(of, 1)).toFixed(1).padStart(5);
  const lines = [
    `== ${worker}: ${(total / 1e6).toFixed(2)} s sampled, ${(busy / 1e6).toFixed(2)} s busy ` +
      `(${profile.samples.length} samples)`,
    "by kind (% of busy time):",
  ];
  for (const [k, us] of [...kinds].sort((a, b) => b[1] - a[1])) {
    if (k !== "idle") lines.push(`  ${pct(us, busy)} %  ${k}`);
  }
  lines.push("functions by self time (% of busy time):");
  for (const [name, us] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, 40)) {
    if (name.startsWith("(idle)")) continue;
    lines.push(`  ${pct(us, busy)} %  ${name}`);
  }
  return lines.join("\n");
}

const sessions = workers.map((w) => [w, session(w)]);
for (const [, s] of sessions) {
  await s.call("Profiler.enable");
  await s.call("Profiler.setSamplingInterval", { interval: 250 });
  await s.call("Profiler.start");
}
await new Promise((r) => setTimeout(r, Number(secs) * 1000));
const parts = [];
for (const [w, s] of sessions) {
  const { profile } = await s.call("Profiler.stop");
  writeFileSync(`${out}.${w.replaceAll(":", "_")}.cpuprofile`, JSON.stringify(profile));
  parts.push(summarise(w, profile));
  s.close();
}
writeFileSync(out, parts.join("\n\n") + "\n");
console.log(parts.join("\n\n"));
process.exit(0);
