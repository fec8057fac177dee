// streamGeneration against a real service while the job's text is being written, over
// a connection that keeps breaking: `cargo test --test api stream_deltas::js_` starts
// the service, writes the rows as the worker does, and runs this file with
// BOOKENGINE_URL, DELTA_TOKEN, DELTA_JOB_ID, DELTA_TOTAL and DELTA_FINALS (the final
// text of each call, by "step_id:item_index") and READY_FILE (written at the first
// request: the writer starts then). Not a *.test.mjs: it needs that writer.
import { writeFileSync } from "node:fs";
import { test } from "node:test";
import assert from "node:assert/strict";
import { createEngineClient } from "./engines.js";

function env(name) {
  const v = process.env[name];
  assert.ok(v, `${name} is required`);
  return v;
}

test("streamGeneration resumes through 20 broken connections with every row once", async () => {
  const total = Number(env("DELTA_TOTAL"));
  const finals = JSON.parse(env("DELTA_FINALS"));
  const sentIds = [];
  let breaks = 0;
  // A fetch whose event streams break after a few chunks, 20 times.
  const breaking = async (url, init) => {
    if (sentIds.length === 0) writeFileSync(env("READY_FILE"), "ready");
    const response = await fetch(url, init);
    if (!String(url).endsWith("/events") || !response.body) return response;
    sentIds.push(init.headers["Last-Event-ID"] ?? null);
    if (breaks >= 20) return response;
    breaks += 1;
    const cutAfter = 1 + Math.floor(Math.random() * 4);
    const reader = response.body.getReader();
    let chunks = 0;
    const body = new ReadableStream({
      async pull(controller) {
        if (chunks >= cutAfter) {
          reader.cancel().catch(() => {});
          controller.error(new TypeError("terminated")); // as undici reports a dropped connection
          return;
        }
        const { value, done } = await reader.read();
        if (done) return controller.close();
        chunks += 1;
        controller.enqueue(value);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  const client = createEngineClient({
    baseUrl: env("BOOKENGINE_URL"),
    getAccessToken: () => env("DELTA_TOKEN"),
    fetch: breaking,
  });
  const seqs = [];
  const result = await client.streamGeneration(env("DELTA_JOB_ID"), {
    onDelta: (row) => seqs.push(row.seq),
    reconnectDelayMs: 50,
    signal: AbortSignal.timeout(90_000),
  });
  assert.equal(breaks, 20, "the connection broke 20 times");
  assert.ok(sentIds.filter((id) => id !== null).length >= 10, `resumed with Last-Event-ID: ${sentIds}`);
  assert.deepEqual(seqs, Array.from({ length: total }, (_, i) => i + 1), "every row once, in order");
  assert.equal(result.last, total);
  assert.deepEqual(result.texts, finals, "the reassembled text is the final text");
  assert.equal(result.job.status, "succeeded");
});
