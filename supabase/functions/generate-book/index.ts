// Supabase Edge Function `generate-book`: the React app's doorway to bookengine.
//
//   const { data, error } = await supabase.functions.invoke("generate-book", {
//     body: { input: { topic: "Bees", chapters: 5 }, engine_id: null },
//   });                                         // -> 202 + the queued job
//   await supabase.functions.invoke(`generate-book?id=${data.id}`, { method: "GET" });
//
// POST forwards the JSON body to `${BOOKENGINE_URL}/v1/generations`; GET ?id=<job id>
// forwards to `${BOOKENGINE_URL}/v1/generations/<id>`. Both carry the caller's own
// `Authorization` header, so bookengine applies that user's row-level security; the
// function holds no service key. The service's status and JSON body come back as
// they are, with CORS headers. Only Deno built-ins are used (no remote imports).
//
// Environment (`supabase secrets set BOOKENGINE_URL=https://...`):
//   BOOKENGINE_URL              the bookengine service, no trailing /v1 (required)
//   BOOKENGINE_TIMEOUT_MS       upstream timeout, default 30000

export const corsHeaders: Record<string, string> = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
  "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
  "Access-Control-Max-Age": "86400",
};

/** The largest request body forwarded (a generation request is a small JSON object). */
export const MAX_BODY_BYTES = 64 * 1024;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface HandlerOptions {
  /** The bookengine base URL; defaults to the BOOKENGINE_URL environment variable, read per request. */
  bookengineUrl?: string;
  /** Upstream timeout; defaults to BOOKENGINE_TIMEOUT_MS or 30 s. */
  timeoutMs?: number;
  /** A fetch implementation (defaults to the global fetch). */
  fetch?: typeof fetch;
}

function json(status: number, body: unknown, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...corsHeaders, "Content-Type": "application/json", ...extra },
  });
}

function failure(
  status: number,
  code: string,
  message: string,
  extra: Record<string, string> = {},
): Response {
  return json(status, { error: { code, message } }, extra);
}

function bearer(req: Request): string | null {
  const header = req.headers.get("authorization") ?? "";
  const m = /^bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1] : null;
}

class TooLarge extends Error {}

/** The body as text, refusing more than MAX_BODY_BYTES however it is sent. */
async function readCapped(req: Request): Promise<string> {
  const declared = Number(req.headers.get("content-length") ?? "NaN");
  if (Number.isFinite(declared) && declared > MAX_BODY_BYTES) throw new TooLarge();
  if (!req.body) return "";
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel().catch(() => {});
      throw new TooLarge();
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder("utf-8", { fatal: true }).decode(all);
}

function envTimeout(): number {
  const raw = Number(Deno.env.get("BOOKENGINE_TIMEOUT_MS") ?? "");
  return Number.isFinite(raw) && raw > 0 ? raw : 30_000;
}

/** Build a handler; `handler` below is the one `Deno.serve` runs. */
export function createHandler(options: HandlerOptions = {}): (req: Request) => Promise<Response> {
  return async function generateBook(req: Request): Promise<Response> {
    if (req.method === "OPTIONS") {
      return new Response("ok", { headers: corsHeaders });
    }
    if (req.method !== "POST" && req.method !== "GET") {
      return failure(405, "method_not_allowed", "use POST to request a book, GET ?id=<job id> for its status", {
        Allow: "POST, GET, OPTIONS",
      });
    }
    const token = bearer(req);
    if (!token) {
      return failure(401, "missing_token", "send the user's access token: Authorization: Bearer <jwt>", {
        "WWW-Authenticate": "Bearer",
      });
    }
    const base = (options.bookengineUrl ?? Deno.env.get("BOOKENGINE_URL") ?? "").trim().replace(/\/+$/, "");
    if (!base) {
      console.error("generate-book: BOOKENGINE_URL is not set");
      return failure(500, "config_invalid", "the function is not configured (BOOKENGINE_URL)");
    }

    let target: string;
    const init: RequestInit = {
      method: req.method,
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    };
    if (req.method === "GET") {
      const id = new URL(req.url).searchParams.get("id");
      if (!id || !UUID.test(id)) {
        return failure(400, "invalid_request", "GET needs ?id=<generation job id> (a UUID)");
      }
      target = `${base}/v1/generations/${encodeURIComponent(id)}`;
    } else {
      let text: string;
      try {
        text = await readCapped(req);
      } catch (e) {
        if (e instanceof TooLarge) {
          return failure(413, "payload_too_large", `the request body is over ${MAX_BODY_BYTES} bytes`);
        }
        return failure(400, "invalid_json", "the body is not valid UTF-8 JSON");
      }
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        return failure(400, "invalid_json", "the body is not valid JSON; send {\"input\": {...}, \"engine_id\"?: \"...\"}");
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        return failure(400, "invalid_request", "the body must be a JSON object: {\"input\": {...}, \"engine_id\"?: \"...\"}");
      }
      target = `${base}/v1/generations`;
      (init.headers as Record<string, string>)["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }

    const timeoutMs = options.timeoutMs ?? envTimeout();
    init.signal = AbortSignal.timeout(timeoutMs);
    const doFetch = options.fetch ?? fetch;
    let upstream: Response;
    let text: string;
    try {
      upstream = await doFetch(target, init);
      text = await upstream.text();
    } catch (e) {
      const timedOut = e instanceof DOMException && e.name === "TimeoutError";
      // Never log the token or the request: the method, the path and the reason only.
      console.error(`generate-book: ${req.method} ${new URL(target).pathname} failed: ${timedOut ? "timeout" : (e as Error)?.name}`);
      return timedOut
        ? failure(504, "backend_timeout", `the book engine service did not answer within ${timeoutMs} ms`)
        : failure(502, "backend_unavailable", "the book engine service cannot be reached");
    }
    const type = upstream.headers.get("content-type") ?? "";
    if (upstream.status === 204 || (text === "" && upstream.ok)) {
      return new Response(null, { status: upstream.status === 200 ? 204 : upstream.status, headers: corsHeaders });
    }
    if (!type.includes("json")) {
      console.error(`generate-book: upstream answered ${upstream.status} with ${type || "no content type"}`);
      return failure(502, "bad_gateway", `the book engine service answered ${upstream.status} without JSON`);
    }
    const extra: Record<string, string> = {};
    const retryAfter = upstream.headers.get("retry-after");
    if (retryAfter) extra["Retry-After"] = retryAfter;
    if (upstream.status === 401) extra["WWW-Authenticate"] = "Bearer";
    return new Response(text, {
      status: upstream.status,
      headers: { ...corsHeaders, "Content-Type": "application/json", ...extra },
    });
  };
}

const defaultHandler = createHandler();

/** The function: reads BOOKENGINE_URL on every request. */
export async function handler(req: Request): Promise<Response> {
  return await defaultHandler(req);
}

if (import.meta.main) Deno.serve(handler);
