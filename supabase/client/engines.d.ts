// Types for engines.js (the bookengine HTTP API client).

export type Tier = "hobby" | "pro" | "enterprise";
export type JobStatus = "queued" | "running" | "succeeded" | "failed" | "cancelled";
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A flow document (see docs/flow.schema.json and examples/book-flow.json). */
export interface FlowDocument {
  name: string;
  description?: string | null;
  type: string;
  execution_mode?: "sequential" | "parallel" | string;
  tier?: Tier | null;
  steps: Array<{ id: string; name?: string; configuration: Record<string, Json> }>;
  [key: string]: unknown;
}

export interface Engine {
  id: string;
  name: string;
  description: string | null;
  flow_config: Record<string, Json>;
  models: Json[];
  execution_mode: string | null;
  tier: Tier | null;
  active: boolean;
  created_by: string | null;
  created_at: string | null;
  updated_at: string | null;
  /** The service's check of the engine, whoever wrote it (engine_checks). */
  check?: EngineCheck | null;
  /** Deploy and update only: how the React app's spellings were read. */
  notes?: Note[];
}

/** One rewrite of the React app's spelling: at `path`, `from` was read as `to`. */
export interface Note {
  path: string;
  from: string;
  to: string;
}

export interface EngineCheck {
  state: "pending" | "runnable" | "not_runnable";
  /** Why it cannot run, each with the path of the field. */
  issues: { path: string; code: string; message: string; [key: string]: Json }[];
  notes: Note[];
  checked_at: string | null;
}

export interface EngineFilter {
  active?: boolean;
  tier?: Tier;
}

export interface EngineUpdates {
  name?: string;
  /** null clears it. */
  description?: string | null;
  active?: boolean;
  /** null clears it. */
  tier?: Tier | null;
  /** A new flow document: validated and redeployed. `flow_config`/`flowConfig` are accepted too. */
  flow?: FlowDocument;
  flow_config?: FlowDocument;
  flowConfig?: FlowDocument;
}

export interface Assignment {
  id: string;
  engine_id: string;
  assignment_type: "tier" | "user";
  tier: Tier | null;
  user_id: string | null;
  priority: number | null;
  active: boolean;
  created_at: string | null;
}

/** Exactly one of tier / userId (user_id). */
export interface NewAssignment {
  engineId?: string;
  engine_id?: string;
  tier?: Tier;
  userId?: string;
  user_id?: string;
  priority?: number;
  active?: boolean;
}

export interface BulkAssignment {
  engineIds?: string[];
  engine_ids?: string[];
  tiers?: Tier[];
  userIds?: string[];
  user_ids?: string[];
  priority?: number;
  active?: boolean;
}

export interface AssignmentFilter {
  engineId?: string;
  engine_id?: string;
  userId?: string;
  user_id?: string;
  tier?: Tier;
}

export interface AssignmentPatch {
  priority?: number;
  active?: boolean;
}

/**
 * An engine the caller may use, with the assignment that gives it, in precedence order
 * (`rank`). The one used by default is the first whose `runnable` is not false.
 */
export interface EngineChoice extends Omit<Engine, "active" | "created_by" | "check" | "notes"> {
  assignment_id: string;
  assignment_type: "tier" | "user";
  assignment_priority: number | null;
  assigned_at: string | null;
  rank: number;
  check_state: "pending" | "runnable" | "not_runnable";
  /** true: checked; false: known broken, skipped by resolution; null: check pending. */
  runnable: boolean | null;
  check_issues: { path: string; code: string; message: string; [key: string]: Json }[];
  /** The engine version the caller gets. */
  version: number | null;
  /** true when that version is a rollout's candidate (the caller is in its share). */
  rollout: boolean | null;
}

/** Jobs that ran one version: shares of finished jobs, wall time of succeeded ones. */
export interface VersionStats {
  version: number;
  jobs: number;
  finished: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  succeeded_share: number | null;
  failed_share: number | null;
  median_wall_ms: number | null;
  p95_wall_ms: number | null;
  tokens_per_job: number | null;
}

export interface EngineVersion {
  engine_id: string;
  version: number;
  origin: "deploy" | "update" | "rollback" | "proposal" | "migration";
  /** rollback: the version it restores. */
  restored_from: number | null;
  note: string | null;
  created_by: string | null;
  created_at: string | null;
  execution_mode: "sequential" | "parallel" | null;
  /** The service's check of this version; a candidate reaches users only when runnable. */
  check_state: "pending" | "runnable" | "not_runnable";
  check_issues: { path: string; code: string; message: string; [key: string]: Json }[];
  checked_at: string | null;
  /** One version only (not in the history). */
  flow_config?: Json;
  models?: Json;
  steps?: number;
  current: boolean;
  candidate: boolean;
  stats?: VersionStats;
}

export interface Rollout {
  version: number;
  percent: number;
  started_at: string | null;
  started_by: string | null;
  updated_at: string | null;
}

export interface RolloutState {
  engine_id: string;
  current_version: number;
  rollout: Rollout | null;
}

export interface VersionHistory extends RolloutState {
  versions: EngineVersion[];
}

export interface FieldChange {
  /** Dotted path inside the step (`configuration.model`) or the flow. */
  field: string;
  /** null when absent. */
  from: Json;
  to: Json;
}

export interface VersionDiff {
  from: number;
  to: number;
  /** Step ids. */
  added: string[];
  removed: string[];
  changed: { id: string; fields: FieldChange[] }[];
  order?: FieldChange;
  /** execution_mode, models and the flow's own keys. */
  flow: FieldChange[];
  identical: boolean;
}

/** How far a job has come: calls done of calls known, and the step under way. */
export interface Progress {
  done: number;
  total: number;
  /** Absent on a queued job and once the run has ended. */
  current?: string | null;
}

export interface GenerationJob {
  id: string;
  user_id: string;
  engine_id: string | null;
  engine_name: string;
  /** The engine version the job runs (its snapshot's). */
  engine_version: number | null;
  input: Record<string, Json>;
  status: JobStatus;
  progress: Progress;
  attempt: number;
  max_attempts: number;
  /** Claims lost because a worker died; not counted in `attempt`. */
  lease_losses: number;
  cancel_requested: boolean;
  error: string | null;
  errors: Json[];
  result: Json | null;
  usage: Record<string, Json>;
  scheduled_at?: string | null;
  created_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string | null;
}

export interface GenerationStep {
  step_id: string;
  item_index: number;
  status: string;
  provider: string | null;
  model: string | null;
  fallback_used: boolean;
  attempts: number;
  output: Json | null;
  error: string | null;
  usage: Record<string, Json>;
  latency_ms: number | null;
  attempt_log: Json[];
  started_at: string | null;
  finished_at: string | null;
}

export interface GenerationDetail extends GenerationJob {
  steps: GenerationStep[];
}

export type GenerationEvent =
  | { type: "progress"; data: GenerationDetail }
  | { type: "done"; data: GenerationDetail }
  | { type: "error"; data: { code: string; message: string } };

/** One row of a job's text stream (generation_deltas, sql/V11). */
export interface DeltaRow {
  /** Position in the job's stream (the SSE id); strictly increasing from 1. */
  seq: number;
  step_id: string;
  /** -1 for a plain step, else the item of a for_each fan-out. */
  item_index: number;
  kind: "attempt" | "delta" | "discard" | "restart";
  attempt: number;
  run: number;
  /** For `delta`: more text of the current attempt; for `attempt`: its first text (may be ''); otherwise ''. */
  text: string;
  /** attempt: {provider, model, attempt, fallback}; discard: {reason}. */
  meta?: Json | null;
}

export type StreamEvent =
  | (GenerationEvent & { id?: string })
  | { type: "attempt" | "delta" | "discard" | "restart"; data: DeltaRow; id?: string };

export interface StreamOptions extends WatchOptions {
  /** Called for each row, with the text of its call (step_id, item_index) so far. */
  onDelta?: ((row: DeltaRow, text: string) => void) | null;
  /** Called for every event (progress, done, error and the rows). */
  onEvent?: ((event: StreamEvent) => void) | null;
  /** Start after this seq (a Last-Event-ID kept from an earlier stream); default 0. */
  after?: number;
  /** Called each time the stream is open: first (`reconnects` 0) and after every reopening. */
  onOpen?: ((info: StreamOpen) => void) | null;
  /** Called when the stream ended before the job did, just before it is reopened. */
  onDrop?: ((info: StreamDrop) => void) | null;
}

export interface StreamOpen {
  /** The seq the stream resumes after (sent as Last-Event-ID; 0 for the start). */
  after: number;
  /** How many times the stream was reopened before this one. */
  reconnects: number;
}

export interface StreamDrop {
  /** Why it ended: `network_error` (the connection broke), the code of the stream's last
   *  `error` event (e.g. `token_expired`), or null when the stream just ended. */
  error: EngineServiceError | null;
  /** The last seq received: the stream is reopened after it. */
  after: number;
  /** Reopenings in a row without news (1 when the last stream brought some). */
  failures: number;
  /** How long the client waits before reopening. */
  delayMs: number;
}

export interface StreamResult {
  /** The finished job (succeeded, failed or cancelled), with its steps' outputs. */
  job: GenerationDetail;
  /** The reassembled text of each call streamed, by "step_id:item_index". */
  texts: Record<string, string>;
  /** The last seq received (0 when none). */
  last: number;
}

export interface WatchOptions {
  signal?: AbortSignal;
  /** Reopen a dropped stream at most this many times in a row (default 5). */
  maxReconnects?: number;
  /** Wait before reopening (default 1000 ms). */
  reconnectDelayMs?: number;
}

export interface EngineClientOptions {
  /** The bookengine service, e.g. https://bookengine.example.com (no trailing /v1). */
  baseUrl: string;
  /** The signed-in user's Supabase access token, e.g. from supabase.auth.getSession(). */
  getAccessToken: () => string | null | undefined | Promise<string | null | undefined>;
  /** A fetch implementation (defaults to globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface EngineClient {
  deployEngine(flow: FlowDocument): Promise<Engine>;
  getEngines(filter?: EngineFilter): Promise<Engine[]>;
  getEngine(id: string): Promise<Engine>;
  updateEngine(id: string, updates: EngineUpdates): Promise<Engine>;
  deleteEngine(id: string): Promise<true>;
  getEngineVersions(id: string): Promise<VersionHistory>;
  getEngineVersion(id: string, version: number): Promise<EngineVersion>;
  diffEngineVersions(id: string, from: number, to: number): Promise<VersionDiff>;
  /** Makes `version` current again as a new version (returned). */
  rollbackEngine(id: string, version: number, note?: string): Promise<EngineVersion>;
  /** A new version that is not current: a rollout candidate (checked before the answer). */
  proposeEngineVersion(id: string, flow: FlowDocument, note?: string): Promise<EngineVersion>;
  getRollout(id: string): Promise<RolloutState>;
  /** `percent` 0-100 of the engine's users, fixed per user: the same users while it holds. */
  startRollout(id: string, version: number, percent: number): Promise<RolloutState>;
  promoteRollout(id: string): Promise<RolloutState>;
  abortRollout(id: string): Promise<RolloutState>;
  assignEngine(assignment: NewAssignment): Promise<Assignment>;
  bulkAssign(spec: BulkAssignment): Promise<Assignment[]>;
  getAssignments(filter?: AssignmentFilter): Promise<Assignment[]>;
  updateAssignment(id: string, patch: AssignmentPatch): Promise<Assignment>;
  removeAssignment(id: string): Promise<true>;
  getMyEngines(): Promise<EngineChoice[]>;
  /** null when no engine is assigned (no_engine_assigned). */
  getMyEngine(): Promise<EngineChoice | null>;
  requestGeneration(
    input: Record<string, unknown>,
    options?: { engineId?: string | null; engine_id?: string | null },
  ): Promise<GenerationJob>;
  getGeneration(id: string): Promise<GenerationDetail>;
  listGenerations(opts?: { limit?: number; status?: JobStatus }): Promise<GenerationJob[]>;
  cancelGeneration(id: string): Promise<GenerationJob>;
  /** Resolves with the finished job (succeeded, failed or cancelled). */
  watchGeneration(
    id: string,
    onEvent?: ((event: GenerationEvent) => void) | null,
    options?: WatchOptions,
  ): Promise<GenerationDetail>;
  /** The job's text as it is written (resumes with Last-Event-ID), then the finished job. */
  streamGeneration(id: string, options?: StreamOptions): Promise<StreamResult>;
}

export declare class EngineServiceError extends Error {
  constructor(
    message: string,
    options?: { code?: string; status?: number; details?: unknown; cause?: unknown },
  );
  name: "EngineServiceError";
  /** The service's snake_case code, e.g. permission_denied, engine_not_found, flow_not_ready;
   *  or network_error / missing_token / unexpected_response / stream_closed from the client. */
  code: string;
  /** HTTP status; 0 when the service could not be reached. */
  status: number;
  /** e.g. { issues: [{ path, code, message }] } for flow errors. */
  details?: any;
}

export declare function isFinished(job: { status: string } | null | undefined): boolean;
export declare function createEngineClient(options: EngineClientOptions): EngineClient;
export default createEngineClient;
