/* @ts-self-types="./engines.d.ts" */
// bookengine client: a dependency-free ES module for browsers and Node 20+.
// One file on purpose (about 630 lines): the React app copies it as is, without a
// bundler step, and the admin page serves this same file.
//
// The React app's services (engineDeploymentService.js, engineAssignmentService.js,
// bookGenerationService.js) delegate to it. Every call sends the signed-in user's
// Supabase access token as `Authorization: Bearer ...`; the service enforces the same
// row-level security as PostgREST, so an admin token can deploy and assign, a user
// token can only read what it may see and request its own generations.
//
//   import { supabase } from './supabaseClient';
//   import { createEngineClient } from './engines.js';
//   export const engines = createEngineClient({
//     baseUrl: import.meta.env.VITE_BOOKENGINE_URL,
//     getAccessToken: async () =>
//       (await supabase.auth.getSession()).data.session?.access_token,
//   });
//
// Errors are thrown as EngineServiceError with the service's `code` (snake_case),
// the HTTP `status` (0 when the service could not be reached) and `details`.

/** An error answered by the service (or a failure to reach it). */
export class EngineServiceError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, status?: number, details?: unknown, cause?: unknown}} [options]
   */
  constructor(message, { code = "unknown_error", status = 0, details, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "EngineServiceError";
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

/** The SSE events that carry a text row (`id:` = its seq). */
const ROW_EVENTS = new Set(["attempt", "delta", "discard", "restart"]);

/** Stream errors that no reconnect can fix. */
const FINAL_STREAM_ERRORS = new Set(["generation_not_found", "invalid_token", "permission_denied"]);

/** True when a job's status is final. */
export function isFinished(job) {
  return Boolean(job) && FINISHED.has(job.status);
}

function pick(obj, ...names) {
  if (!obj) return undefined;
  for (const n of names) {
    if (obj[n] !== undefined) return obj[n];
  }
  return undefined;
}

function compact(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    if (v !== undefined) out[k] = v;
  }
  return out;
}

function queryString(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

function segment(id, what) {
  if (id === undefined || id === null || id === "") {
    throw new EngineServiceError(`${what} is required`, {
      code: "invalid_request",
      status: 400,
    });
  }
  return encodeURIComponent(String(id));
}

function abortError(signal) {
  if (signal && signal.reason !== undefined) return signal.reason;
  const e = new Error("The operation was aborted");
  e.name = "AbortError";
  return e;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(t);
      reject(abortError(signal));
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Turn a non-2xx response into an EngineServiceError.
 * @param {Response} response
 */
async function errorFrom(response) {
  const text = await response.text().catch(() => "");
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  const err = body && typeof body === "object" ? body.error : undefined;
  if (err && typeof err === "object" && typeof err.code === "string") {
    return new EngineServiceError(err.message || err.code, {
      code: err.code,
      status: response.status,
      details: err.details,
    });
  }
  return new EngineServiceError(
    `bookengine answered HTTP ${response.status}${text ? `: ${text.slice(0, 200)}` : ""}`,
    { code: "unexpected_response", status: response.status },
  );
}

/**
 * Read a text/event-stream body, calling `onMessage({event, data, id})` per event.
 * Returns when the stream ends; `onMessage` returning true stops reading early.
 */
async function readEventStream(body, onMessage) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data = [];
  let id;
  const dispatch = () => {
    if (data.length === 0) {
      event = "";
      return false;
    }
    const message = { event: event || "message", data: data.join("\n"), id };
    event = "";
    data = [];
    return onMessage(message) === true;
  };
  const line = (l) => {
    if (l === "") return dispatch();
    if (l.startsWith(":")) return false; // comment / keep-alive
    const colon = l.indexOf(":");
    const field = colon === -1 ? l : l.slice(0, colon);
    let value = colon === -1 ? "" : l.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
    return false;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      // Lines end with \r\n, \n or \r; a trailing \r may be half of a \r\n.
      for (;;) {
        const m = /\r\n|\n|\r/.exec(buffer);
        if (!m) break;
        if (m[0] === "\r" && m.index === buffer.length - 1) break;
        const l = buffer.slice(0, m.index);
        buffer = buffer.slice(m.index + m[0].length);
        if (line(l)) return;
      }
    }
    buffer += decoder.decode();
    if (buffer) line(buffer.replace(/\r$/, ""));
    dispatch();
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Create a client for the bookengine HTTP API.
 * @param {{baseUrl: string, getAccessToken: () => (string|null|undefined|Promise<string|null|undefined>), fetch?: typeof fetch}} options
 */
export function createEngineClient({ baseUrl, getAccessToken, fetch: fetchImpl } = {}) {
  if (!baseUrl) throw new TypeError("createEngineClient: baseUrl is required");
  if (typeof getAccessToken !== "function") {
    throw new TypeError("createEngineClient: getAccessToken must be a function");
  }
  const base = String(baseUrl).replace(/\/+$/, "");
  const doFetch = fetchImpl || ((...args) => globalThis.fetch(...args));

  async function authHeaders() {
    const token = await getAccessToken();
    if (!token) {
      throw new EngineServiceError("not signed in: no access token", {
        code: "missing_token",
        status: 401,
      });
    }
    return { Authorization: `Bearer ${token}` };
  }

  async function send(method, path, { body, signal, accept = "application/json", headers: extra } = {}) {
    const headers = { Accept: accept, ...extra, ...(await authHeaders()) };
    const init = { method, headers, signal };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await doFetch(`${base}${path}`, init);
    } catch (cause) {
      if (signal?.aborted) throw abortError(signal);
      throw new EngineServiceError(`cannot reach bookengine at ${base}: ${cause?.message || cause}`, {
        code: "network_error",
        status: 0,
        cause,
      });
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async function request(method, path, options) {
    const response = await send(method, path, options);
    if (response.status === 204) return null;
    const text = await response.text();
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch (cause) {
      throw new EngineServiceError("bookengine answered with a body that is not JSON", {
        code: "unexpected_response",
        status: response.status,
        cause,
      });
    }
  }

  // ---- engines (admins deploy and manage; users read what they may see) ----

  /** Deploy a flow document as a new engine (admins). */
  function deployEngine(flow) {
    return request("POST", "/v1/engines", { body: flow });
  }

  /** List engines: `{active?: boolean, tier?: 'hobby'|'pro'|'enterprise'}`. */
  function getEngines(filter = {}) {
    return request("GET", `/v1/engines${queryString({ active: filter.active, tier: filter.tier })}`);
  }

  function getEngine(id) {
    return request("GET", `/v1/engines/${segment(id, "engine id")}`);
  }

  /** Update `{name?, description?, active?, tier?, flow?}`; a new `flow` redeploys. */
  function updateEngine(id, updates = {}) {
    const body = compact({
      name: updates.name,
      description: updates.description,
      active: updates.active,
      tier: updates.tier,
      flow: pick(updates, "flow", "flow_config", "flowConfig"),
    });
    return request("PATCH", `/v1/engines/${segment(id, "engine id")}`, { body });
  }

  async function deleteEngine(id) {
    await request("DELETE", `/v1/engines/${segment(id, "engine id")}`);
    return true;
  }

  // ---- versions and rollouts (admins) ----
  // Every change of an engine's flow is a version, whoever made it (this client,
  // supabase-js, the CLI): a trigger writes it. These read and act on them.

  /** History, newest first: `{engine_id, current_version, rollout, versions: [...]}`
   * with each version's numbers (`stats`: jobs, shares, median/p95 wall time, tokens per job). */
  function getEngineVersions(id) {
    return request("GET", `/v1/engines/${segment(id, "engine id")}/versions`);
  }

  /** One version with its flow_config. */
  function getEngineVersion(id, version) {
    return request("GET", `/v1/engines/${segment(id, "engine id")}/versions/${segment(version, "version")}`);
  }

  /** What changed from version `from` to `to`: steps added, removed, changed (fields, old -> new). */
  function diffEngineVersions(id, from, to) {
    return request(
      "GET",
      `/v1/engines/${segment(id, "engine id")}/versions/${segment(from, "version")}/diff/${segment(to, "version")}`,
    );
  }

  /** Make `version` current again, as a new version. */
  function rollbackEngine(id, version, note) {
    return request("POST", `/v1/engines/${segment(id, "engine id")}/rollback`, {
      body: compact({ version, note }),
    });
  }

  /** Store a flow document as a new version that is not current: a rollout candidate. */
  function proposeEngineVersion(id, flow, note) {
    return request("POST", `/v1/engines/${segment(id, "engine id")}/versions`, {
      body: compact({ flow, note }),
    });
  }

  /** `{engine_id, current_version, rollout: {version, percent, ...} | null}`. */
  function getRollout(id) {
    return request("GET", `/v1/engines/${segment(id, "engine id")}/rollout`);
  }

  /** Roll `version` out to `percent` (0-100) of the engine's users, or change the share. */
  function startRollout(id, version, percent) {
    return request("POST", `/v1/engines/${segment(id, "engine id")}/rollout`, {
      body: { version, percent },
    });
  }

  /** The candidate becomes current for everyone (keeping its number). */
  function promoteRollout(id) {
    return request("POST", `/v1/engines/${segment(id, "engine id")}/rollout/promote`, { body: {} });
  }

  /** Every user back on the current version. */
  function abortRollout(id) {
    return request("POST", `/v1/engines/${segment(id, "engine id")}/rollout/abort`, { body: {} });
  }

  // ---- assignments (admins) ----

  /** Assign an engine to a tier or to one user; assigning again updates it. */
  function assignEngine(assignment = {}) {
    const body = compact({
      engine_id: pick(assignment, "engineId", "engine_id"),
      tier: assignment.tier,
      user_id: pick(assignment, "userId", "user_id"),
      priority: assignment.priority,
      active: assignment.active,
    });
    return request("POST", "/v1/assignments", { body });
  }

  /** Every engine x every tier and user, all-or-nothing. */
  function bulkAssign(spec = {}) {
    const body = compact({
      engine_ids: pick(spec, "engineIds", "engine_ids") || [],
      tiers: spec.tiers || [],
      user_ids: pick(spec, "userIds", "user_ids") || [],
      priority: spec.priority,
      active: spec.active,
    });
    return request("POST", "/v1/assignments/bulk", { body });
  }

  /** `{engineId?, userId?, tier?}` (snake_case accepted too). */
  function getAssignments(filter = {}) {
    const q = queryString({
      engine_id: pick(filter, "engineId", "engine_id"),
      user_id: pick(filter, "userId", "user_id"),
      tier: filter.tier,
    });
    return request("GET", `/v1/assignments${q}`);
  }

  function updateAssignment(id, patch = {}) {
    const body = compact({ priority: patch.priority, active: patch.active });
    return request("PATCH", `/v1/assignments/${segment(id, "assignment id")}`, { body });
  }

  async function removeAssignment(id) {
    await request("DELETE", `/v1/assignments/${segment(id, "assignment id")}`);
    return true;
  }

  // ---- the signed-in user's engines ----

  /** Every engine the caller may use, best first. */
  function getMyEngines() {
    return request("GET", "/v1/me/engines");
  }

  /** The engine a generation would use now, or null when none is assigned. */
  async function getMyEngine() {
    try {
      return await request("GET", "/v1/me/engine");
    } catch (e) {
      if (e instanceof EngineServiceError && e.code === "no_engine_assigned") return null;
      throw e;
    }
  }

  // ---- generations ----

  /** Queue a book; returns the job (status `queued`). `engineId` picks one of the caller's engines. */
  function requestGeneration(input = {}, options = {}) {
    const body = compact({
      input,
      engine_id: pick(options, "engineId", "engine_id") ?? undefined,
    });
    return request("POST", "/v1/generations", { body });
  }

  /** The job with its `steps`. */
  function getGeneration(id) {
    return request("GET", `/v1/generations/${segment(id, "generation id")}`);
  }

  /** `{limit?, status?}`: the caller's jobs, newest first. */
  function listGenerations(opts = {}) {
    return request("GET", `/v1/generations${queryString({ limit: opts.limit, status: opts.status })}`);
  }

  function cancelGeneration(id) {
    return request("POST", `/v1/generations/${segment(id, "generation id")}/cancel`);
  }

  /**
   * Follow a job over Server-Sent Events (fetch streaming: EventSource cannot send
   * an Authorization header). `onEvent({type, data})` gets every `progress` event
   * (data: job + steps), `error` events (data: {code, message}) and the final
   * `done`. Resolves with the finished job (+ steps). If the stream drops, the job
   * is fetched and the stream reopened (at most `maxReconnects` times in a row).
   */
  async function watchGeneration(id, onEvent, options = {}) {
    const { signal, maxReconnects = 5, reconnectDelayMs = 1000 } = options;
    const path = `/v1/generations/${segment(id, "generation id")}/events`;
    const emit = (type, data) => {
      if (typeof onEvent === "function") onEvent({ type, data });
    };
    let failures = 0;
    for (;;) {
      if (signal?.aborted) throw abortError(signal);
      let final = null;
      let sawEvent = false;
      let callbackError = null;
      try {
        const response = await send("GET", path, { signal, accept: "text/event-stream" });
        if (!response.body) {
          throw new EngineServiceError("the response has no body to stream", {
            code: "unexpected_response",
            status: response.status,
          });
        }
        await readEventStream(response.body, (message) => {
          let data;
          try {
            data = JSON.parse(message.data);
          } catch {
            data = message.data;
          }
          sawEvent = true;
          const type = message.event === "message" ? "progress" : message.event;
          if (type === "done") final = data;
          try {
            emit(type, data);
          } catch (err) {
            callbackError = err; // the caller's own error: stop and rethrow it
            return true;
          }
          return type === "done";
        });
      } catch (e) {
        if (signal?.aborted) throw abortError(signal);
        // Answers from the service (404, 401, ...) are final; a dropped stream
        // (network_error, or the body ending mid-read) is reopened below.
        if (e instanceof EngineServiceError && e.code !== "network_error") throw e;
      }
      if (callbackError) throw callbackError;
      if (final) return final;
      // The stream ended without `done`: look at the job itself.
      const job = await getGeneration(id);
      if (isFinished(job)) {
        emit("done", job);
        return job;
      }
      failures = sawEvent ? 1 : failures + 1;
      if (failures > maxReconnects) {
        throw new EngineServiceError("the progress stream keeps closing before the job ends", {
          code: "stream_closed",
          status: 0,
        });
      }
      await sleep(reconnectDelayMs, signal);
    }
  }

  /**
   * Follow a job's text as it is written, resuming by itself: every dropped stream is
   * reopened with `Last-Event-ID` (the last text row received), so each row arrives
   * exactly once, in order, whatever the connection does. Rows are
   * `{seq, step_id, item_index, kind, attempt, run, text, meta?}`; `onDelta(row, text)`
   * gets each with the text of its call (step, item) so far, reassembled by the rule
   * of sql/V11 and V15: an `attempt` starts the call's text again from the row's text, a
   * `delta` adds to it, a `discard` or `restart` empties it. Resolves with `{job, texts,
   * last}`: the finished job, the texts by `"step_id:item_index"`, the last seq.
   * `onOpen({after, reconnects})` is called each time the stream is open (a page can
   * say "live" then); `onDrop({error, after, failures, delayMs})` when it ended before
   * the job did and is about to be reopened (`error`: why, or null when it just ended).
   */
  async function streamGeneration(id, options = {}) {
    const { onDelta, onEvent, onOpen, onDrop, signal, maxReconnects = 5, reconnectDelayMs = 1000 } = options;
    const path = `/v1/generations/${segment(id, "generation id")}/events`;
    let last = Number.isSafeInteger(options.after) && options.after > 0 ? options.after : 0;
    const texts = {};
    let failures = 0;
    for (let reconnects = 0; ; reconnects += 1) {
      if (signal?.aborted) throw abortError(signal);
      let final = null;
      let progressed = false;
      let callbackError = null;
      let fatal = null;
      let dropped = null; // why the stream ended early, for onDrop
      try {
        const headers = last > 0 ? { "Last-Event-ID": String(last) } : undefined;
        const response = await send("GET", path, { signal, accept: "text/event-stream", headers });
        if (!response.body) {
          throw new EngineServiceError("the response has no body to stream", {
            code: "unexpected_response",
            status: response.status,
          });
        }
        if (typeof onOpen === "function") {
          try {
            onOpen({ after: last, reconnects });
          } catch (err) {
            callbackError = err;
            response.body.cancel().catch(() => {});
          }
        }
        if (!callbackError) await readEventStream(response.body, (message) => {
          let data;
          try {
            data = JSON.parse(message.data);
          } catch {
            data = message.data;
          }
          const type = message.event === "message" ? "progress" : message.event;
          try {
            if (ROW_EVENTS.has(type) && data && typeof data === "object") {
              const seq = Number(data.seq);
              if (!(seq > last)) return false; // already had it (cannot happen with a resuming server)
              last = seq;
              progressed = true;
              const key = `${data.step_id}:${data.item_index}`;
              // An attempt starts the call's text again from its own (its first text);
              // a delta adds to it; a discard or restart voids it (sql/V11, V15).
              const base = type === "delta" ? (texts[key] ?? "") : "";
              texts[key] = base + String(data.text ?? "");
              if (typeof onDelta === "function") onDelta(data, texts[key]);
            } else if (type === "done") {
              final = data;
            } else if (type === "progress") {
              progressed = true;
            } else if (type === "error" && data && typeof data === "object") {
              const error = new EngineServiceError(data.message || data.code, { code: data.code, status: 0 });
              if (FINAL_STREAM_ERRORS.has(data.code)) fatal = error;
              else dropped = error; // token_expired, an outage: the stream ends, then resumes
            }
            if (typeof onEvent === "function") onEvent({ type, data, id: message.id });
          } catch (err) {
            callbackError = err; // the caller's own error: stop and rethrow it
            return true;
          }
          return type === "done";
        });
      } catch (e) {
        if (signal?.aborted) throw abortError(signal);
        if (e instanceof EngineServiceError && e.code !== "network_error") throw e;
        // A connection broken mid-read surfaces as the runtime's own error (undici: TypeError).
        dropped = e instanceof EngineServiceError
          ? e
          : new EngineServiceError(`the event stream broke: ${e?.message || e}`, { code: "network_error", status: 0, cause: e });
      }
      if (callbackError) throw callbackError;
      if (final) return { job: final, texts, last };
      if (fatal) throw fatal;
      // Dropped, or ended without `done` (token_expired, a dependency's outage): resume.
      failures = progressed ? 1 : failures + 1;
      if (failures > maxReconnects) {
        throw new EngineServiceError("the event stream keeps closing before the job ends", {
          code: "stream_closed",
          status: 0,
        });
      }
      const delayMs = progressed ? Math.min(reconnectDelayMs, 100) : reconnectDelayMs;
      if (typeof onDrop === "function") onDrop({ error: dropped, after: last, failures, delayMs });
      await sleep(delayMs, signal);
    }
  }

  return {
    deployEngine,
    getEngines,
    getEngine,
    updateEngine,
    deleteEngine,
    getEngineVersions,
    getEngineVersion,
    diffEngineVersions,
    rollbackEngine,
    proposeEngineVersion,
    getRollout,
    startRollout,
    promoteRollout,
    abortRollout,
    assignEngine,
    bulkAssign,
    getAssignments,
    updateAssignment,
    removeAssignment,
    getMyEngines,
    getMyEngine,
    requestGeneration,
    getGeneration,
    listGenerations,
    cancelGeneration,
    watchGeneration,
    streamGeneration,
  };
}

export default createEngineClient;
