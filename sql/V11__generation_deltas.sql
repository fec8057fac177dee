-- Durable text streams (issue #14): what the worker receives from a provider, as it
-- arrives, in order, readable by the job's owner (and admins) under RLS while the job
-- runs, kept for a retention window after it ends (the step outputs hold the text then).
--
-- Reassembly rule (what every reader does):
--   the text of one call (step_id, item_index) is the concatenation, in seq order, of
--   its `delta` rows that come after its last `attempt`, `discard` or `restart` row.
--   When the step finishes that text equals the step's raw model output byte for byte:
--   the worker flushes a call's deltas before that call's step record is saved, and all
--   of a job's deltas before job_complete.
-- Kinds:
--   attempt  a call attempt starts; meta = {provider, model, attempt, fallback}
--   delta    text: one or more provider deltas of the current attempt, concatenated
--   discard  the current attempt failed part-way; its text is void; meta = {reason}
--   restart  a resumed job (worker crash, lost lease) runs this call again; whatever
--            an earlier run streamed for it is void
-- (run, attempt) names one attempt: run is the job's claim number, 1 for its first
-- claim (the worker writes generation_jobs.attempt + lease_losses at claim time: V8
-- gives the attempt back when a lease is lost, so the attempt alone would repeat after
-- a crash), attempt the call's attempt number (1-based, across retries and fallbacks)
-- within that run; a `restart` row has attempt 0.
--
-- Reading (the React app, with supabase-js):
--   supabase.from('generation_deltas').select('seq,step_id,item_index,kind,attempt,run,text,meta')
--     .eq('job_id', id).gt('seq', lastSeq).order('seq')
-- The primary key serves exactly that query.

CREATE TABLE public.generation_deltas (
  job_id uuid NOT NULL REFERENCES public.generation_jobs(id) ON DELETE CASCADE,
  -- Assigned by the worker holding the lease: 1, 2, 3, … per job; a resumed job
  -- continues after the highest stored seq (delta_head, below).
  seq bigint NOT NULL CHECK (seq > 0),
  step_id text NOT NULL,
  -- -1 for a plain step; 0..n-1 for the items of a for_each fan-out (as generation_steps).
  item_index integer NOT NULL,
  kind text NOT NULL CHECK (kind IN ('attempt', 'delta', 'discard', 'restart')),
  attempt integer NOT NULL,
  run integer NOT NULL,
  text text NOT NULL DEFAULT '',
  meta jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id, seq)
);

ALTER TABLE public.generation_deltas ENABLE ROW LEVEL SECURITY;

-- The owner's job ids once (an init plan over generation_jobs_user_idx, as V8's step
-- policy), and the admin test once (an init plan): the per-row test is an array
-- membership, and the caller's job_id=eq.X is an index condition on the primary key.
CREATE POLICY "Owners and admins can view deltas of a job" ON public.generation_deltas
  FOR SELECT USING (
    job_id = ANY (ARRAY(SELECT j.id FROM public.generation_jobs j WHERE j.user_id = (select auth.uid())))
    OR (select public.is_engine_admin()));

-- Read-only for people; only delta_append (below) writes.
REVOKE ALL ON TABLE public.generation_deltas FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.generation_deltas TO authenticated, service_role;

-- Retention finds finished jobs by their end (one index entry per job, written once).
CREATE INDEX generation_jobs_finished_idx ON public.generation_jobs (finished_at, id)
  WHERE finished_at IS NOT NULL;

---------------------------------------------------------------------------------------
-- Writes: one call per worker per flush, carrying the rows of all its running jobs.
---------------------------------------------------------------------------------------
-- p_rows: [{job_id, lease, seq, step_id, item_index, kind, attempt, run, text?, meta?}]
-- Each job's lease is checked (FOR KEY SHARE, as V6's step_save: a takeover's
-- FOR UPDATE cannot commit while the rows are written, and one that committed first
-- changed the token). Rows of a job whose lease does not match are refused for that
-- job only; the others land. A retried flush is idempotent (ON CONFLICT DO NOTHING).
-- Returns {"inserted": n, "refused": [job ids], "cancel": [job ids]}: the worker stops
-- the refused jobs, and learns of a user's cancel at the next flush (every ~100 ms
-- while text streams) instead of at the next heartbeat.
-- Each accepted job is notified once on channel generation_deltas (payload: job id),
-- delivered at commit, for readers that LISTEN.
-- Bounded even for the service: at most 5,000 rows and 4 MiB of JSON per call.
CREATE FUNCTION public.delta_append(p_rows jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  refused uuid[];
  accepted uuid[];
  cancel uuid[];
  n bigint;
  j uuid;
BEGIN
  IF p_rows IS NULL OR jsonb_typeof(p_rows) <> 'array' THEN
    RAISE EXCEPTION 'p_rows must be a JSON array' USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;
  IF jsonb_array_length(p_rows) > 5000 THEN
    RAISE EXCEPTION 'at most 5000 rows per call' USING ERRCODE = '22023', DETAIL = 'too_many_deltas';
  END IF;
  IF octet_length(p_rows::text) > 4194304 THEN
    RAISE EXCEPTION 'at most 4 MiB per call' USING ERRCODE = '22023', DETAIL = 'deltas_too_large';
  END IF;
  -- No temporary table: at one call per worker per 100 ms its catalog churn would cost
  -- more than reading the (bounded) array three times.
  IF EXISTS (SELECT 1 FROM jsonb_to_recordset(p_rows) AS r(job_id uuid, lease uuid, seq bigint,
               step_id text, kind text, attempt integer, run integer)
              WHERE r.job_id IS NULL OR r.lease IS NULL OR r.seq IS NULL OR r.step_id IS NULL
                 OR r.kind IS NULL OR r.attempt IS NULL OR r.run IS NULL) THEN
    RAISE EXCEPTION 'every row needs job_id, lease, seq, step_id, kind, attempt and run'
      USING ERRCODE = '22023', DETAIL = 'invalid_request';
  END IF;

  -- The jobs whose lease holds, locked against a takeover until commit (in id order,
  -- so two flushes naming the same jobs cannot deadlock).
  SELECT coalesce(array_agg(g.id), '{}'), coalesce(array_agg(g.id) FILTER (WHERE g.cancel_requested), '{}')
    INTO accepted, cancel FROM (
    SELECT x.id, x.cancel_requested FROM public.generation_jobs x
      JOIN (SELECT DISTINCT r.job_id, r.lease
              FROM jsonb_to_recordset(p_rows) AS r(job_id uuid, lease uuid)) k
        ON k.job_id = x.id AND k.lease = x.lease_token
     WHERE x.status = 'running'
     ORDER BY x.id
       FOR KEY SHARE OF x) g;
  SELECT coalesce(array_agg(DISTINCT r.job_id), '{}') INTO refused
    FROM jsonb_to_recordset(p_rows) AS r(job_id uuid)
   WHERE NOT (r.job_id = ANY (accepted));

  INSERT INTO public.generation_deltas (job_id, seq, step_id, item_index, kind, attempt, run, text, meta)
  SELECT r.job_id, r.seq, r.step_id, coalesce(r.item_index, -1), r.kind, r.attempt, r.run,
         coalesce(r.text, ''), r.meta
    FROM jsonb_to_recordset(p_rows) AS r(job_id uuid, seq bigint, step_id text, item_index integer,
         kind text, attempt integer, run integer, text text, meta jsonb)
   WHERE r.job_id = ANY (accepted)
  ON CONFLICT (job_id, seq) DO NOTHING;
  GET DIAGNOSTICS n = ROW_COUNT;

  FOREACH j IN ARRAY accepted LOOP
    PERFORM pg_notify('generation_deltas', j::text);
  END LOOP;
  RETURN jsonb_build_object('inserted', n, 'refused', to_jsonb(refused), 'cancel', to_jsonb(cancel));
END
$$;

-- Where a (resumed) run of a job continues: the highest stored seq (0 when none) and
-- the calls that already streamed something (each gets a `restart` row when this run
-- runs it again). Read after job_claim, which waited for any flush of the lost run.
CREATE FUNCTION public.delta_head(p_job_id uuid, p_lease uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM public.generation_jobs x
                  WHERE x.id = p_job_id AND x.status = 'running' AND x.lease_token = p_lease) THEN
    RAISE EXCEPTION 'lease lost: job % is no longer held by this worker', p_job_id
      USING ERRCODE = 'PT409', DETAIL = 'lease_lost';
  END IF;
  RETURN jsonb_build_object(
    'seq', coalesce((SELECT max(d.seq) FROM public.generation_deltas d WHERE d.job_id = p_job_id), 0),
    'calls', coalesce((SELECT jsonb_agg(jsonb_build_array(c.step_id, c.item_index))
                         FROM (SELECT DISTINCT d.step_id, d.item_index FROM public.generation_deltas d
                                WHERE d.job_id = p_job_id) c), '[]'::jsonb));
END
$$;

---------------------------------------------------------------------------------------
-- Retention: the deltas of a job are deleted p_retention_seconds after it finished.
---------------------------------------------------------------------------------------
-- Any worker may call it (its claim loop does, every few seconds); one runs at a time
-- (the watermark row is taken SKIP LOCKED, a busy one returns at once). The watermark
-- is the finished_at up to which every job is done; only jobs that ended more than the
-- retention ago (at least 5 s, far longer than any commit) are taken, so a job whose
-- finishing transaction was still open when the watermark moved cannot be skipped.
-- Work per call is bounded by p_max_jobs; the rest waits for the next call.
-- Returns {"jobs": n, "deleted": rows, "busy": bool}.
CREATE TABLE public.generation_delta_retention (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  done_until timestamptz NOT NULL DEFAULT '-infinity',
  done_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'
);
INSERT INTO public.generation_delta_retention DEFAULT VALUES;
ALTER TABLE public.generation_delta_retention ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE public.generation_delta_retention FROM PUBLIC, anon, authenticated, service_role;

CREATE FUNCTION public.delta_compact(p_retention_seconds integer DEFAULT 600, p_max_jobs integer DEFAULT 500)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  mark public.generation_delta_retention;
  upto timestamptz := now() - make_interval(secs => greatest(coalesce(p_retention_seconds, 600), 5));
  jobs uuid[];
  last_end timestamptz;
  last_id uuid;
  n bigint;
BEGIN
  SELECT * INTO mark FROM public.generation_delta_retention r FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('jobs', 0, 'deleted', 0, 'busy', true);
  END IF;
  -- (finished_at, id) order: a claim that releases many jobs gives them one finished_at.
  SELECT array_agg(f.id ORDER BY f.finished_at, f.id) INTO jobs FROM (
    SELECT x.id, x.finished_at FROM public.generation_jobs x
     WHERE x.finished_at IS NOT NULL AND (x.finished_at, x.id) > (mark.done_until, mark.done_id)
       AND x.finished_at <= upto
     ORDER BY x.finished_at, x.id
     LIMIT least(greatest(coalesce(p_max_jobs, 500), 1), 10000)) f;
  IF jobs IS NULL THEN
    RETURN jsonb_build_object('jobs', 0, 'deleted', 0, 'busy', false);
  END IF;
  DELETE FROM public.generation_deltas d WHERE d.job_id = ANY (jobs);
  GET DIAGNOSTICS n = ROW_COUNT;
  last_id := jobs[cardinality(jobs)];
  SELECT x.finished_at INTO last_end FROM public.generation_jobs x WHERE x.id = last_id;
  UPDATE public.generation_delta_retention SET done_until = last_end, done_id = last_id;
  RETURN jsonb_build_object('jobs', cardinality(jobs), 'deleted', n, 'busy', false);
END
$$;

REVOKE ALL ON FUNCTION public.delta_append(jsonb), public.delta_head(uuid, uuid),
  public.delta_compact(integer, integer) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.delta_append(jsonb), public.delta_head(uuid, uuid),
  public.delta_compact(integer, integer) TO service_role;
