// Tests for the generate-book Edge Function. Only Deno built-ins: no remote imports.
//
//   npm ci --prefix supabase/functions
//   BOOKENGINE_URL=http://127.0.0.1:8787 PRO_TOKEN=<a pro user's access token> \
//   DENO_NO_UPDATE_CHECK=1 supabase/functions/node_modules/.bin/deno test \
//     --no-remote --allow-net --allow-env --allow-read supabase/functions/
//
// The unit tests need nothing running; the integration test needs a real bookengine
// service (BOOKENGINE_URL) and a token of a user with an engine assigned (PRO_TOKEN),
// and FAILS (never skips) without them. `cargo test --test api js_clients` runs it all.

import { corsHeaders, createHandler, handler, MAX_BODY_BYTES } from "./index.ts";

// ---- tiny assertions (no std library: nothing may be downloaded) ----

function assert(cond: unknown, message = "assertion failed"): asserts cond {
  if (!cond) throw new Error(message);
}

/** JSON with object keys sorted, so key order (jsonb reorders them) does not matter. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x) =>
    x && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x);
}

function assertEquals(actual: unknown, expected: unknown, message = "") {
  const a = canonical(actual);
  const e = canonical(expected);
  if (a !== e) throw new Error(`${message ? message + ": " : ""}expected ${e}, got ${a}`);
}

async function errorOf(res: Response): Promise<{ code: string; message: string }> {
  assertEquals(res.headers.get("content-type"), "application/json", "content type");
  const body = await res.json();
  assert(body && typeof body.error === "object", `an error body: ${JSON.stringify(body)}`);
  assertEquals(typeof body.error.code, "string");
  assertEquals(typeof body.error.message, "string");
  return body.error;
}

function assertCors(res: Response) {
  assertEquals(res.headers.get("access-control-allow-origin"), "*", "CORS origin");
  assert(
    (res.headers.get("access-control-allow-headers") ?? "").includes("authorization"),
    "CORS allows the authorization header",
  );
}

/** A fetch that records calls and must not be reached. */
function forbiddenFetch() {
  const calls: string[] = [];
  const f = ((input: string | URL | Request) => {
    calls.push(String(input));
    return Promise.reject(new Error("upstream must not be called"));
  }) as typeof fetch;
  return { calls, fetch: f };
}

const TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1bml0LXRlc3QifQ.c2lnbmF0dXJlLXNlY3JldC10b2tlbg";

function post(body: BodyInit | null, headers: Record<string, string> = {}): Request {
  return new Request("http://localhost/functions/v1/generate-book", {
    method: "POST",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json", ...headers },
    body,
  });
}

/** A port on 127.0.0.1 that nothing listens on. */
function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Run `fn` with an environment variable set (or removed), then restore it. */
async function withEnv<T>(name: string, value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const old = Deno.env.get(name);
  if (value === undefined) Deno.env.delete(name);
  else Deno.env.set(name, value);
  try {
    return await fn();
  } finally {
    if (old === undefined) Deno.env.delete(name);
    else Deno.env.set(name, old);
  }
}

/** Capture console.error output while `fn` runs. */
async function capturingErrors<T>(fn: () => Promise<T>): Promise<[T, string]> {
  const original = console.error;
  let out = "";
  console.error = (...args: unknown[]) => {
    out += args.map(String).join(" ") + "\n";
  };
  try {
    return [await fn(), out];
  } finally {
    console.error = original;
  }
}

// ---- unit tests ----

Deno.test("OPTIONS preflight answers with CORS headers", async () => {
  const res = await handler(new Request("http://localhost/generate-book", { method: "OPTIONS" }));
  assertEquals(res.status, 200);
  assertCors(res);
  assert((res.headers.get("access-control-allow-methods") ?? "").includes("POST"));
  await res.body?.cancel();
});

Deno.test("no bearer token: 401 JSON error, upstream never called", async () => {
  const spy = forbiddenFetch();
  const h = createHandler({ bookengineUrl: "http://127.0.0.1:9", fetch: spy.fetch });
  for (const auth of [undefined, "", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer"]) {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (auth !== undefined) headers.Authorization = auth;
    const res = await h(
      new Request("http://localhost/generate-book", { method: "POST", headers, body: "{\"input\":{}}" }),
    );
    assertEquals(res.status, 401, `Authorization: ${auth}`);
    assertEquals(res.headers.get("www-authenticate"), "Bearer");
    assertCors(res);
    assertEquals((await errorOf(res)).code, "missing_token");
  }
  assertEquals(spy.calls, [], "upstream calls");
  // The exported handler behaves the same.
  const res = await handler(new Request("http://localhost/generate-book", { method: "POST", body: "{}" }));
  assertEquals(res.status, 401);
  await res.body?.cancel();
});

Deno.test("other methods: 405 with Allow", async () => {
  const spy = forbiddenFetch();
  const h = createHandler({ bookengineUrl: "http://127.0.0.1:9", fetch: spy.fetch });
  for (const method of ["PUT", "DELETE", "PATCH"]) {
    const res = await h(
      new Request("http://localhost/generate-book", { method, headers: { Authorization: `Bearer ${TOKEN}` } }),
    );
    assertEquals(res.status, 405, method);
    assert((res.headers.get("allow") ?? "").includes("POST"));
    assertCors(res);
    assertEquals((await errorOf(res)).code, "method_not_allowed");
  }
  assertEquals(spy.calls, []);
});

Deno.test("invalid JSON, non-object bodies and bad ids: 400", async () => {
  const spy = forbiddenFetch();
  const h = createHandler({ bookengineUrl: "http://127.0.0.1:9", fetch: spy.fetch });
  for (const [body, code] of [
    ["{\"input\": ", "invalid_json"],
    ["", "invalid_json"],
    ["not json", "invalid_json"],
    ["[1, 2]", "invalid_request"],
    ["null", "invalid_request"],
    ["\"text\"", "invalid_request"],
  ]) {
    const res = await h(post(body));
    assertEquals(res.status, 400, `body ${body}`);
    assertCors(res);
    assertEquals((await errorOf(res)).code, code, `body ${body}`);
  }
  for (const query of ["", "?id=", "?id=not-a-uuid", "?id=../../engines"]) {
    const res = await h(
      new Request(`http://localhost/generate-book${query}`, { headers: { Authorization: `Bearer ${TOKEN}` } }),
    );
    assertEquals(res.status, 400, `GET ${query}`);
    assertEquals((await errorOf(res)).code, "invalid_request");
  }
  assertEquals(spy.calls, []);
});

Deno.test("bodies over 64 KiB: 413", async () => {
  const spy = forbiddenFetch();
  const h = createHandler({ bookengineUrl: "http://127.0.0.1:9", fetch: spy.fetch });
  const big = JSON.stringify({ input: { topic: "x".repeat(MAX_BODY_BYTES) } });
  const res = await h(post(big));
  assertEquals(res.status, 413);
  assertEquals((await errorOf(res)).code, "payload_too_large");
  // Streamed without a Content-Length.
  const bytes = new TextEncoder().encode(big);
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < bytes.length; i += 8192) c.enqueue(bytes.slice(i, i + 8192));
      c.close();
    },
  });
  const res2 = await h(post(stream));
  assertEquals(res2.status, 413);
  assertEquals((await errorOf(res2)).code, "payload_too_large");
  assertEquals(spy.calls, []);
});

Deno.test("unreachable service (BOOKENGINE_URL on a closed port): 502, token not logged", async () => {
  const url = `http://127.0.0.1:${closedPort()}`;
  const [res, logged] = await withEnv("BOOKENGINE_URL", url, () =>
    capturingErrors(() => handler(post(JSON.stringify({ input: { topic: "bees" } }))))
  );
  assertEquals(res.status, 502);
  assertCors(res);
  assertEquals((await errorOf(res)).code, "backend_unavailable");
  assert(logged.includes("generate-book"), `something was logged: ${logged}`);
  assert(!logged.includes(TOKEN) && !logged.includes("c2lnbmF0dXJl"), "the token is never logged");

  const [res2] = await withEnv("BOOKENGINE_URL", url, () =>
    capturingErrors(() =>
      handler(
        new Request("http://localhost/generate-book?id=00000000-0000-4000-8000-000000000000", {
          headers: { Authorization: `Bearer ${TOKEN}` },
        }),
      )
    )
  );
  assertEquals(res2.status, 502);
  await res2.body?.cancel();
});

Deno.test("BOOKENGINE_URL unset: 500 config_invalid", async () => {
  const [res] = await withEnv("BOOKENGINE_URL", undefined, () =>
    capturingErrors(() => handler(post("{\"input\":{}}")))
  );
  assertEquals(res.status, 500);
  assertEquals((await errorOf(res)).code, "config_invalid");
});

Deno.test("forwards the caller's token and body; returns the service's status and JSON", async () => {
  const seen: { method: string; path: string; auth: string | null; body: string }[] = [];
  const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    seen.push({
      method: req.method,
      path: new URL(req.url).pathname,
      auth: req.headers.get("authorization"),
      body: await req.text(),
    });
    return req.method === "POST"
      ? Response.json({ error: { code: "no_engine_assigned", message: "no engine assigned" } }, { status: 404 })
      : Response.json({ id: "j", status: "running", steps: [] });
  });
  try {
    const base = `http://127.0.0.1:${upstream.addr.port}/`;
    const h = createHandler({ bookengineUrl: base });
    const res = await h(post(JSON.stringify({ input: { topic: "bees" }, engine_id: null })));
    assertEquals(res.status, 404);
    assertCors(res);
    assertEquals((await errorOf(res)).code, "no_engine_assigned");
    const id = "00000000-0000-4000-8000-000000000000";
    const res2 = await h(
      new Request(`http://localhost/generate-book?id=${id}`, { headers: { Authorization: `Bearer ${TOKEN}` } }),
    );
    assertEquals(res2.status, 200);
    assertEquals(await res2.json(), { id: "j", status: "running", steps: [] });
    assertEquals(seen, [
      {
        method: "POST",
        path: "/v1/generations",
        auth: `Bearer ${TOKEN}`,
        body: JSON.stringify({ input: { topic: "bees" }, engine_id: null }),
      },
      { method: "GET", path: `/v1/generations/${id}`, auth: `Bearer ${TOKEN}`, body: "" },
    ]);
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("corsHeaders match Supabase's example", () => {
  assertEquals(corsHeaders["Access-Control-Allow-Origin"], "*");
  assertEquals(
    corsHeaders["Access-Control-Allow-Headers"],
    "authorization, x-client-info, apikey, content-type",
  );
});

// ---- integration: the real service ----

Deno.test("integration: a pro user's request is queued by the real service (202)", async () => {
  const url = Deno.env.get("BOOKENGINE_URL");
  const token = Deno.env.get("PRO_TOKEN");
  if (!url || !token) {
    throw new Error(
      "missing environment: BOOKENGINE_URL and PRO_TOKEN must name a running bookengine service and " +
        "the access token of a user with an engine assigned; run through `cargo test --test api js_clients` " +
        "or see supabase/README.md",
    );
  }
  const res = await handler(
    new Request("http://localhost/functions/v1/generate-book", {
      method: "POST",
      headers: {
        Authorization: `Bearer ${token}`,
        "Content-Type": "application/json",
        "x-client-info": "supabase-js/2",
        apikey: "anon",
      },
      body: JSON.stringify({ input: { topic: "honey bees", chapters: 2 } }),
    }),
  );
  const job = await res.json();
  assertEquals(res.status, 202, `POST answer ${JSON.stringify(job)}`);
  assertCors(res);
  assertEquals(job.status, "queued");
  assert(typeof job.id === "string" && job.id.length === 36, "a job id");
  assertEquals(job.input, { topic: "honey bees", chapters: 2 });
  assert(job.engine_id, "the user's engine was resolved");

  const res2 = await handler(
    new Request(`http://localhost/functions/v1/generate-book?id=${job.id}`, {
      headers: { Authorization: `Bearer ${token}` },
    }),
  );
  const shown = await res2.json();
  assertEquals(res2.status, 200, `GET answer ${JSON.stringify(shown)}`);
  assertEquals(shown.id, job.id);
  assert(["queued", "running", "succeeded"].includes(shown.status), shown.status);
  assert(Array.isArray(shown.steps), "steps are listed");

  // A token the service rejects: its 401 comes back as is.
  const res3 = await handler(
    new Request("http://localhost/functions/v1/generate-book", {
      method: "POST",
      headers: { Authorization: "Bearer not-a-jwt", "Content-Type": "application/json" },
      body: "{\"input\":{}}",
    }),
  );
  assertEquals(res3.status, 401);
  assertCors(res3);
  await res3.body?.cancel();
});
