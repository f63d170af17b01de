// Runs the built worker (build/index.js + build/index_bg.wasm) in workerd through the miniflare
// API: starts in under a second, never reaches the network (`cf: false`), binds 127.0.0.1.
//
//   EDGE_PORT=18101 EDGE_BINDINGS='{"EDGE_REGION":"EUW",...}' node edge/cloudflare/run.mjs
//
// EDGE_EXTRA_WORKERS='[{"name":"js","host":"js.edge","dir":"/abs/build","main":"worker.js"}]' adds
// workers to the same workerd, with the same bindings, served for requests whose Host is
// `host` (the edge benchmark runs the JavaScript way and the code before a change side by
// side this way); every other request goes to the edge worker.
//
// Prints `ready http://127.0.0.1:<port>` once serving. Stops (and stops workerd) on SIGINT,
// SIGTERM or when stdin closes, so a test harness that dies takes the worker with it.
// EDGE_INSPECTOR_PORT opens the DevTools inspector there (for profile.mjs).
import { Miniflare } from "miniflare";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const build = path.join(here, "build");
const bindings = JSON.parse(process.env.EDGE_BINDINGS || "{}");
const port = Number(process.env.EDGE_PORT || "0");

const worker = (name, dir, main) => ({
  name,
  modules: true,
  scriptPath: path.join(dir, main),
  // Module names are resolved below this root, whatever the caller's working directory.
  modulesRoot: dir,
  modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
  compatibilityDate: "2025-09-01",
  bindings,
});
const extra = JSON.parse(process.env.EDGE_EXTRA_WORKERS || "[]").map((w) => ({
  ...worker(w.name, w.dir, w.main || "index.js"),
  routes: [`${w.host}/*`],
}));

const mf = new Miniflare({
  workers: [worker("edge", build, "index.js"), ...extra],
  cf: false,
  host: "127.0.0.1",
  port,
  verbose: process.env.EDGE_VERBOSE === "1",
  // The edge benchmark's profile (profile.mjs) reads the isolates through the inspector.
  ...(process.env.EDGE_INSPECTOR_PORT ? { inspectorPort: Number(process.env.EDGE_INSPECTOR_PORT) } : {}),
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await mf.dispose();
  } finally {
    process.exit(0);
  }
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
if (process.env.EDGE_STOP_ON_STDIN_CLOSE !== "0") {
  process.stdin.on("end", stop);
  process.stdin.on("close", stop);
  process.stdin.resume();
}

try {
  const url = await mf.ready;
  console.log(`ready ${url.origin}`);
} catch (e) {
  console.error(`miniflare failed: ${e?.stack || e}`);
  process.exit(1);
}
