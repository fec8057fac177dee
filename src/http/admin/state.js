// What the page knows while it runs: one object shared by every module, so a tab's
// module reads the engines another one loaded without passing them around.

import { short } from './dom.js';

export const TOKEN_KEY = 'bookengine.admin.token';
export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const state = {
  token: null,
  claims: null,
  tab: 'engines',
  engines: [],
  assignments: [],
  jobs: [],
  summaries: new Map(), // job id -> {status, updated_at, models, segments}
  genTimer: null,
  genBusy: false,
  job: null, // {id, abort, detail, texts: Map('step:item' -> text so far)}
  bulk: null, // the previewed request, as JSON text
  versionsOf: null, // the engine whose versions are shown
  history: null, // its GET /v1/engines/{id}/versions
};

export const engineName = (id) => state.engines.find((e) => e.id === id)?.name ?? short(id);
export const targetText = (a) => (a.assignment_type === 'tier' ? `tier ${a.tier}` : `user ${a.user_id}`);
