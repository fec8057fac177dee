// The page's one client for this service's /v1 API: the same tested module the React
// app uses (supabase/client/engines.js, served at /admin/client/engines.js), called
// with the token pasted at sign-in.

import { createEngineClient, EngineServiceError } from './client/engines.js';
import { state } from './state.js';

export { EngineServiceError, isFinished } from './client/engines.js';

export const client = createEngineClient({
  baseUrl: location.origin,
  getAccessToken: () => state.token,
});

/** A refusal found by the page itself (bad input), shown like the service's own. */
export function refusal(code, message, status = 400) {
  return new EngineServiceError(message, { code, status });
}
