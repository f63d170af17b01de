// The JavaScript way, for the edge benchmark only (scripts/bench-edge.sh): a module Worker
// that serves a cached quote the way the Rust worker does — verify the HS256 JWT, rate-limit
// the user with @upstash/ratelimit (sliding window, its ephemeral cache of blocked ids),
// read the vehicle's cache generation and the entry with @upstash/redis in one script call,
// ask the origin and store on a miss. Same Upstash gateway, same workerd, same run; bundled
// with esbuild (the bare @upstash imports need a bundler in workerd).
import { Ratelimit } from "@upstash/ratelimit";
import { Redis } from "@upstash/redis/cloudflare";

const READ = `local g = redis.call('GET', KEYS[1]) or '0'
return redis.call('GET', ARGV[1] .. g .. ARGV[2])`;

let state;

const b64url = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

function init(env) {
  const redis = new Redis({
    url: env.UPSTASH_REDIS_REST_URL,
    token: env.UPSTASH_REDIS_REST_TOKEN,
    enableTelemetry: false,
    automaticDeserialization: false,
  });
  const prefix = env.EDGE_KEY_PREFIX || "edge:";
  return {
    redis,
    prefix,
    limiter: new Ratelimit({
      redis,
      limiter: Ratelimit.slidingWindow(Number(env.EDGE_USER_LIMIT_PER_MIN || 100), "60 s"),
      prefix: `${prefix}js:rl`,
      ephemeralCache: new Map(),
      analytics: false,
    }),
    key: crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode(env.JWT_HS256_SECRET),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["verify"],
    ),
  };
}

async function verify(s, auth, env) {
  const token = (auth || "").replace(/^Bearer /i, "");
  const [h, p, sig] = token.split(".");
  if (!sig) return null;
  const ok = await crypto.subtle.verify("HMAC", await s.key, b64url(sig), new TextEncoder().encode(`${h}.${p}`));
  if (!ok) return null;
  const claims = JSON.parse(new TextDecoder().decode(b64url(p)));
  const now = Date.now() / 1000;
  if (claims.exp < now || claims.iss !== env.JWT_ISSUER || claims.aud !== env.JWT_AUDIENCE) return null;
  return claims;
}

const problem = (status, slug, detail, headers = {}) =>
  new Response(JSON.stringify({ type: `/problems/${slug}`, status, title: slug, detail }), {
    status,
    headers: { "content-type": "application/problem+json", ...headers },
  });

async function digest(text) {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d).slice(0, 16)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export default {
  async fetch(req, env) {
    state ??= init(env);
    const claims = await verify(state, req.headers.get("authorization"), env);
    if (!claims) return problem(401, "unauthorized", "bad token");
    const { success, reset } = await state.limiter.limit(claims.sub);
    if (!success) {
      return problem(429, "rate-limited", "too many requests", {
        "retry-after": String(Math.max(1, Math.ceil((reset - Date.now()) / 1000))),
      });
    }
    const text = await req.text();
    const body = JSON.parse(text);
    const canonical = JSON.stringify(Object.keys(body).sort().map((k) => [k, body[k]]));
    const head = `${state.prefix}js:c:quote:v1:${body.vehicle_id}:`;
    const tail = `:${await digest(`${claims.sub}|${canonical}`)}`;
    const genKey = `${state.prefix}gen:veh:${body.vehicle_id}`;
    const now = Date.now();
    const raw = await state.redis.eval(READ, [genKey], [head, tail]);
    if (raw) {
      const entry = JSON.parse(raw);
      if (entry.f > now) {
        return new Response(entry.b, { status: entry.s, headers: { "content-type": entry.ct, "x-edge-cache": "hit" } });
      }
    }
    const origin = await fetch(`${env.ORIGIN_EUW_URL}/v1/quotes`, {
      method: "POST",
      headers: { authorization: req.headers.get("authorization"), "content-type": "application/json" },
      body: text,
    });
    const answer = await origin.text();
    if (origin.status === 201) {
      const gen = (await state.redis.get(genKey)) || "0";
      const entry = { s: 201, ct: "application/json", b: answer, f: now + 60000 };
      await state.redis.set(`${head}${gen}${tail}`, JSON.stringify(entry), { px: 360000 });
    }
    return new Response(answer, { status: origin.status, headers: { "content-type": "application/json", "x-edge-cache": "miss" } });
  },
};
