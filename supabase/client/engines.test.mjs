// Tests for engines.js against a REAL running bookengine service (nothing mocked,
// except the stream-reader tests at the end, which feed a stream by hand).
//
//   BOOKENGINE_URL=http://127.0.0.1:8787 ADMIN_TOKEN=... PRO_TOKEN=... HOBBY_TOKEN=... \
//   PRO_USER_ID=... EXAMPLE_FLOW_PATH=examples/book-flow.json node --test supabase/client/
//
// ADMIN_TOKEN: an admin's access token; PRO_TOKEN / HOBBY_TOKEN: users on the pro and
// hobby tiers (PRO_USER_ID is the pro user's id). The service must run a worker with
// the offline provider (BOOKENGINE_OFFLINE_FALLBACK=true) so generations finish.
// `cargo test --test api js_clients` sets all of this up and runs this file.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { createEngineClient, EngineServiceError, isFinished } from "./engines.js";

const REQUIRED = [
  "BOOKENGINE_URL",
  "ADMIN_TOKEN",
  "PRO_TOKEN",
  "HOBBY_TOKEN",
  "PRO_USER_ID",
  "EXAMPLE_FLOW_PATH",
];
const missing = REQUIRED.filter((name) => !process.env[name]);
const MISSING_MESSAGE =
  `missing environment: ${missing.join(", ")}. These tests run against a real bookengine ` +
  "service; run them through `cargo test --test api js_clients`, or start a stack " +
  "(see supabase/README.md) and set BOOKENGINE_URL, ADMIN_TOKEN, PRO_TOKEN, HOBBY_TOKEN, " +
  "PRO_USER_ID and EXAMPLE_FLOW_PATH.";

/** Fails the calling test (never skips it) when the environment is incomplete. */
function env() {
  if (missing.length > 0) throw new Error(MISSING_MESSAGE);
  return process.env;
}

function client(tokenVar) {
  const e = env();
  return createEngineClient({
    baseUrl: e.BOOKENGINE_URL,
    getAccessToken: async () => e[tokenVar],
  });
}

function exampleFlow(suffix) {
  const flow = JSON.parse(readFileSync(env().EXAMPLE_FLOW_PATH, "utf8"));
  // A unique name, so the suite can run again against the same service.
  return { ...flow, name: `${flow.name} (js ${suffix} ${Date.now()}-${Math.random().toString(36).slice(2, 8)})` };
}

async function rejectsWith(promise, { code, status }) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof EngineServiceError, `expected EngineServiceError, got ${e?.stack || e}`);
    assert.equal(e.name, "EngineServiceError");
    if (code !== undefined) assert.equal(e.code, code, `code (message: ${e.message})`);
    if (status !== undefined) assert.equal(e.status, status, `status (message: ${e.message})`);
    assert.equal(typeof e.message, "string");
    return true;
  });
}

// One engine deployed by the admin and assigned to tier pro and to the pro user,
// shared by the tests below (created on first use, so each test also runs alone).
let deployed;
function deployedEngine() {
  deployed ??= (async () => {
    const admin = client("ADMIN_TOKEN");
    const engine = await admin.deployEngine(exampleFlow("main"));
    const tierAssignment = await admin.assignEngine({ engineId: engine.id, tier: "pro", priority: 5 });
    const userAssignment = await admin.assignEngine({
      engine_id: engine.id,
      userId: env().PRO_USER_ID,
      priority: 100,
    });
    return { engine, tierAssignment, userAssignment };
  })();
  return deployed;
}

async function freePortClosed() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

test("the environment names a running service", async () => {
  env();
  const res = await fetch(`${env().BOOKENGINE_URL}/healthz`);
  assert.equal(res.status, 200, `GET /healthz at ${env().BOOKENGINE_URL}`);
});

test("admin deploys the example flow as an engine", async () => {
  const { engine } = await deployedEngine();
  assert.match(engine.id, /^[0-9a-f-]{36}$/);
  assert.match(engine.name, /^Book engine \(js main/);
  assert.equal(engine.active, true);
  assert.equal(engine.tier, "pro");
  assert.equal(engine.execution_mode, "parallel");
  assert.equal(typeof engine.flow_config, "object");
  assert.ok(Array.isArray(engine.models) && engine.models.length > 0, "models are listed");

  const admin = client("ADMIN_TOKEN");
  assert.equal((await admin.getEngine(engine.id)).id, engine.id);
  const listed = await admin.getEngines({ active: true, tier: "pro" });
  assert.ok(listed.some((e) => e.id === engine.id), "getEngines({active, tier}) lists it");

  const updated = await admin.updateEngine(engine.id, { description: "updated by the JS client test" });
  assert.equal(updated.description, "updated by the JS client test");
  assert.equal(updated.id, engine.id);
});

test("deploying an invalid flow reports the issues", async () => {
  const admin = client("ADMIN_TOKEN");
  await assert.rejects(admin.deployEngine({ name: "broken", type: "full", steps: "nope" }), (e) => {
    assert.ok(e instanceof EngineServiceError);
    assert.equal(e.status, 400);
    assert.ok(["invalid_flow", "flow_not_ready"].includes(e.code), e.code);
    assert.ok(Array.isArray(e.details?.issues) && e.details.issues.length > 0, JSON.stringify(e.details));
    return true;
  });
});

test("a non-admin cannot deploy: permission_denied 403", async () => {
  const flow = exampleFlow("denied");
  await rejectsWith(client("PRO_TOKEN").deployEngine(flow), { code: "permission_denied", status: 403 });
  await rejectsWith(client("HOBBY_TOKEN").deployEngine(flow), { code: "permission_denied", status: 403 });
});

test("admin assigns the engine to tier pro and to a user", async () => {
  const { engine, tierAssignment, userAssignment } = await deployedEngine();
  assert.equal(tierAssignment.engine_id, engine.id);
  assert.equal(tierAssignment.assignment_type, "tier");
  assert.equal(tierAssignment.tier, "pro");
  assert.equal(tierAssignment.priority, 5);
  assert.equal(userAssignment.assignment_type, "user");
  assert.equal(userAssignment.user_id, env().PRO_USER_ID);

  const admin = client("ADMIN_TOKEN");
  const rows = await admin.getAssignments({ engineId: engine.id });
  const ids = rows.map((a) => a.id).sort();
  assert.deepEqual(ids, [tierAssignment.id, userAssignment.id].sort());
  const byTier = await admin.getAssignments({ engine_id: engine.id, tier: "pro" });
  assert.deepEqual(byTier.map((a) => a.id), [tierAssignment.id]);

  // Assigning the same engine to the same target again updates that assignment.
  const again = await admin.assignEngine({ engineId: engine.id, tier: "pro", priority: 6 });
  assert.equal(again.id, tierAssignment.id);
  assert.equal(again.priority, 6);
  const patched = await admin.updateAssignment(tierAssignment.id, { priority: 5 });
  assert.equal(patched.priority, 5);
});

test("the pro user's engine is the assigned one; the hobby user has none", async () => {
  const { engine } = await deployedEngine();
  const mine = await client("PRO_TOKEN").getMyEngine();
  assert.ok(mine, "the pro user has an engine");
  assert.equal(mine.id, engine.id);
  assert.equal(mine.assignment_type, "user");
  assert.equal(mine.rank, 1);
  const all = await client("PRO_TOKEN").getMyEngines();
  assert.ok(all.some((c) => c.id === engine.id));

  assert.equal(await client("HOBBY_TOKEN").getMyEngine(), null);
  const hobbyEngines = await client("HOBBY_TOKEN").getMyEngines();
  assert.ok(!hobbyEngines.some((c) => c.id === engine.id), "hobby does not see the pro engine");
});

test("bulkAssign assigns every engine to every target, all-or-nothing", async () => {
  const admin = client("ADMIN_TOKEN");
  const { engine } = await deployedEngine();
  const second = await admin.deployEngine(exampleFlow("bulk"));
  const rows = await admin.bulkAssign({
    engineIds: [engine.id, second.id],
    tiers: ["enterprise"],
    userIds: [],
    priority: 2,
  });
  assert.equal(rows.length, 2);
  assert.deepEqual(rows.map((a) => a.engine_id).sort(), [engine.id, second.id].sort());
  for (const a of rows) {
    assert.equal(a.assignment_type, "tier");
    assert.equal(a.tier, "enterprise");
    assert.equal(a.priority, 2);
  }

  // One unknown engine: nothing is written.
  const before = await admin.getAssignments({ engineId: second.id });
  await assert.rejects(
    admin.bulkAssign({ engineIds: [second.id, crypto.randomUUID()], tiers: ["pro"] }),
    (e) => e instanceof EngineServiceError && e.status >= 400 && e.status < 500,
  );
  const after = await admin.getAssignments({ engineId: second.id });
  assert.deepEqual(after.map((a) => a.id).sort(), before.map((a) => a.id).sort());

  // Clean up the second engine's assignments and the engine itself.
  for (const a of after) assert.equal(await admin.removeAssignment(a.id), true);
  assert.equal(await admin.deleteEngine(second.id), true);
  await rejectsWith(admin.getEngine(second.id), { code: "engine_not_found", status: 404 });
});

test("a pro user's generation streams progress and ends succeeded", async () => {
  const { engine } = await deployedEngine();
  const pro = client("PRO_TOKEN");
  const job = await pro.requestGeneration({ topic: "honey bees", chapters: 2 }, { engineId: engine.id });
  assert.equal(job.status, "queued");
  assert.equal(job.engine_id, engine.id);
  assert.equal(job.user_id, env().PRO_USER_ID);

  const events = [];
  const final = await pro.watchGeneration(job.id, (event) => events.push(event), {
    signal: AbortSignal.timeout(90_000),
  });
  const types = events.map((e) => e.type);
  assert.ok(types.includes("progress"), `progress events delivered (got ${types.join(",")})`);
  assert.equal(types.at(-1), "done");
  assert.equal(final.id, job.id);
  assert.equal(final.status, "succeeded", `final job: ${JSON.stringify(final.error ?? final.errors)}`);
  assert.ok(isFinished(final));
  assert.ok(Array.isArray(final.steps) && final.steps.length > 0, "steps are reported");
  assert.ok(final.steps.every((s) => s.status === "succeeded"));
  for (const e of events.filter((e) => e.type === "progress")) assert.equal(e.data.id, job.id);

  const fetched = await pro.getGeneration(job.id);
  assert.equal(fetched.status, "succeeded");
  assert.ok(Array.isArray(fetched.steps));
  const listed = await pro.listGenerations({ limit: 20, status: "succeeded" });
  assert.ok(listed.some((j) => j.id === job.id));
  // Nobody else sees it.
  await rejectsWith(client("HOBBY_TOKEN").getGeneration(job.id), { code: "generation_not_found", status: 404 });
});

test("a generation can be cancelled", async () => {
  const { engine } = await deployedEngine();
  const pro = client("PRO_TOKEN");
  const job = await pro.requestGeneration({ topic: "cancelled book" }, { engineId: engine.id });
  const cancelled = await pro.cancelGeneration(job.id);
  assert.equal(cancelled.id, job.id);
  // The worker may have finished it already (the offline provider is fast).
  assert.ok(cancelled.cancel_requested === true || isFinished(cancelled), JSON.stringify(cancelled));
  const final = await pro.watchGeneration(job.id, null, { signal: AbortSignal.timeout(90_000) });
  assert.ok(isFinished(final));
});

test("watchGeneration stops when aborted", async () => {
  const { engine } = await deployedEngine();
  const pro = client("PRO_TOKEN");
  const job = await pro.requestGeneration({ topic: "aborted watch" }, { engineId: engine.id });
  const controller = new AbortController();
  controller.abort(new Error("stop watching"));
  await assert.rejects(pro.watchGeneration(job.id, null, { signal: controller.signal }), /stop watching/);
  await pro.watchGeneration(job.id, null, { signal: AbortSignal.timeout(90_000) });
});

test("versions: a redeploy is a version, the diff names the field, rollback and a rollout", async () => {
  const admin = client("ADMIN_TOKEN");
  const flow = exampleFlow("versions");
  const engine = await admin.deployEngine(flow);
  const changed = structuredClone(flow);
  changed.steps[0].configuration.model = "gpt-4.1-mini";
  await admin.updateEngine(engine.id, { flow: changed });
  const history = await admin.getEngineVersions(engine.id);
  assert.deepEqual(history.versions.map((v) => v.version), [2, 1]);
  assert.equal(history.current_version, 2);
  const diff = await admin.diffEngineVersions(engine.id, 1, 2);
  assert.deepEqual(diff.changed[0].fields, [{ field: "configuration.model", from: "gpt-4o-mini", to: "gpt-4.1-mini" }]);
  const restored = await admin.rollbackEngine(engine.id, 1, "js");
  assert.equal(restored.version, 3);
  assert.equal(restored.restored_from, 1);
  const rollout = await admin.startRollout(engine.id, 2, 25);
  assert.deepEqual([rollout.current_version, rollout.rollout.version, rollout.rollout.percent], [3, 2, 25]);
  assert.equal((await admin.abortRollout(engine.id)).rollout, null);
  await rejectsWith(client("PRO_TOKEN").getEngineVersions(engine.id), { code: "permission_denied", status: 403 });
  await admin.deleteEngine(engine.id);
});

test("service errors, missing tokens and an unreachable service", async () => {
  const e = env();
  const pro = client("PRO_TOKEN");
  await rejectsWith(pro.getEngine(crypto.randomUUID()), { code: "engine_not_found", status: 404 });
  await rejectsWith(pro.getGeneration(crypto.randomUUID()), { code: "generation_not_found", status: 404 });

  const anonymous = createEngineClient({ baseUrl: e.BOOKENGINE_URL, getAccessToken: async () => null });
  await rejectsWith(anonymous.getMyEngine(), { code: "missing_token", status: 401 });
  const forged = createEngineClient({ baseUrl: e.BOOKENGINE_URL, getAccessToken: () => "not-a-jwt" });
  await rejectsWith(forged.getMyEngines(), { status: 401 });

  const port = await freePortClosed();
  const down = createEngineClient({ baseUrl: `http://127.0.0.1:${port}`, getAccessToken: () => e.PRO_TOKEN });
  await rejectsWith(down.getMyEngines(), { code: "network_error", status: 0 });
});

// --- the SSE reader, fed by hand (no service involved) ---

function streamingFetch(chunks, { status = 200 } = {}) {
  const encoder = new TextEncoder();
  return async () =>
    new Response(
      new ReadableStream({
        start(controller) {
          for (const c of chunks) controller.enqueue(encoder.encode(c));
          controller.close();
        },
      }),
      { status, headers: { "content-type": "text/event-stream" } },
    );
}

test("the SSE reader handles CRLF, comments, split chunks and multi-line data", async () => {
  const job = { id: "j1", status: "succeeded", steps: [] };
  const c = createEngineClient({
    baseUrl: "http://example.invalid",
    getAccessToken: () => "t",
    fetch: streamingFetch([
      ": keep-alive\r\n\r\n",
      "event: progress\r\ndata: {\"id\":\"j1\",",
      "\"status\":\"running\"}\r\n\r",
      "\nevent: progress\ndata: {\"id\":\"j1\",\ndata: \"status\":\"running\"}\n\n",
      `event: done\ndata: ${JSON.stringify(job)}\n\n`,
      "event: progress\ndata: {\"after\":\"done\"}\n\n",
    ]),
  });
  const events = [];
  const final = await c.watchGeneration("j1", (e) => events.push(e));
  assert.deepEqual(final, job);
  assert.deepEqual(
    events.map((e) => [e.type, e.data.status]),
    [
      ["progress", "running"],
      ["progress", "running"],
      ["done", "succeeded"],
    ],
  );
});

test("an error answer to the event stream is an EngineServiceError", async () => {
  const c = createEngineClient({
    baseUrl: "http://example.invalid",
    getAccessToken: () => "t",
    fetch: async () =>
      new Response(JSON.stringify({ error: { code: "generation_not_found", message: "no such job" } }), {
        status: 404,
        headers: { "content-type": "application/json" },
      }),
  });
  await rejectsWith(c.watchGeneration("x", () => {}), { code: "generation_not_found", status: 404 });
});

/** A fetch answering each request with the next of `answers` (a list of SSE chunks, or an
 * Error to break the body after its chunks); records the Last-Event-ID of each request. */
function sequenceFetch(answers, sent) {
  const encoder = new TextEncoder();
  return async (_url, init) => {
    sent.push(init.headers["Last-Event-ID"] ?? null);
    const answer = answers.shift();
    assert.ok(answer, "no more answers: the client asked once too often");
    const [chunks, breakWith] = Array.isArray(answer) ? [answer, null] : [answer.chunks, answer.breakWith];
    const queue = [...chunks];
    return new Response(
      // Pulled one chunk at a time: an error raised at once would discard the queued chunks.
      new ReadableStream({
        pull(controller) {
          if (queue.length) controller.enqueue(encoder.encode(queue.shift()));
          else if (breakWith) controller.error(breakWith);
          else controller.close();
        },
      }),
      { status: 200, headers: { "content-type": "text/event-stream" } },
    );
  };
}

const row = (seq, kind, text = "") =>
  `event: ${kind}\nid: ${seq}\ndata: ${JSON.stringify({ seq, step_id: "s", item_index: -1, kind, attempt: 1, run: 1, text })}\n\n`;

test("streamGeneration tells onOpen and onDrop when the stream opens, drops and resumes", async () => {
  const job = { id: "j1", status: "succeeded", steps: [] };
  const sent = [];
  const c = createEngineClient({
    baseUrl: "http://example.invalid",
    getAccessToken: () => "t",
    fetch: sequenceFetch(
      [
        [row(1, "attempt"), row(2, "delta", "Once ")],
        // The token expired: the stream says so and ends; the client resumes.
        [row(3, "delta", "upon"), 'event: error\ndata: {"code":"token_expired","message":"the token expired"}\n\n'],
        { chunks: [row(4, "delta", " a")], breakWith: new TypeError("terminated") },
        [row(5, "delta", " time"), `event: done\ndata: ${JSON.stringify(job)}\n\n`],
      ],
      sent,
    ),
  });
  const calls = [];
  const result = await c.streamGeneration("j1", {
    onOpen: (info) => calls.push(["open", info]),
    onDrop: ({ error, ...rest }) => calls.push(["drop", { code: error?.code ?? null, ...rest }]),
    onDelta: (r, text) => calls.push(["delta", r.seq, text]),
    reconnectDelayMs: 5,
  });
  assert.deepEqual(sent, [null, "2", "3", "4"]);
  assert.deepEqual(calls, [
    ["open", { after: 0, reconnects: 0 }],
    ["delta", 1, ""],
    ["delta", 2, "Once "],
    ["drop", { code: null, after: 2, failures: 1, delayMs: 5 }],
    ["open", { after: 2, reconnects: 1 }],
    ["delta", 3, "Once upon"],
    ["drop", { code: "token_expired", after: 3, failures: 1, delayMs: 5 }],
    ["open", { after: 3, reconnects: 2 }],
    ["delta", 4, "Once upon a"],
    ["drop", { code: "network_error", after: 4, failures: 1, delayMs: 5 }],
    ["open", { after: 4, reconnects: 3 }],
    ["delta", 5, "Once upon a time"],
  ]);
  assert.deepEqual(result, { job, texts: { "s:-1": "Once upon a time" }, last: 5 });
});

test("an onOpen that throws stops streamGeneration with its own error", async () => {
  const sent = [];
  const c = createEngineClient({
    baseUrl: "http://example.invalid",
    getAccessToken: () => "t",
    fetch: sequenceFetch([[row(1, "delta", "never read")]], sent),
  });
  const deltas = [];
  await assert.rejects(
    c.streamGeneration("j1", {
      onOpen: () => {
        throw new RangeError("the page's own bug");
      },
      onDelta: (r) => deltas.push(r.seq),
    }),
    (e) => e instanceof RangeError && e.message === "the page's own bug",
  );
  assert.deepEqual([sent.length, deltas], [1, []]);
});
