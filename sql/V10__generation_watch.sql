-- The event stream's reads (src/generations/watch.rs) under V8's owner-only policies.
-- V8 shows a person only their own jobs and steps through the tables, and every job to
-- an admin through definer functions that test the caller explicitly; the stream's
-- light read (job state and each step's status, no outputs) is one such function, so an
-- admin watching another user's book is not told "not found". Its result is the
-- fingerprint of what a viewer can see change: the same state gives the same bytes.
CREATE FUNCTION public.generation_watch(job_id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT jsonb_build_object(
           'id', j.id, 'status', j.status, 'progress', j.progress, 'attempt', j.attempt,
           'cancel_requested', j.cancel_requested, 'updated_at', j.updated_at,
           'steps', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'step_id', s.step_id, 'item_index', s.item_index,
                                'status', s.status, 'attempts', s.attempts,
                                'started_at', s.started_at, 'finished_at', s.finished_at)
                              ORDER BY s.step_id, s.item_index)
                              FROM public.generation_steps s WHERE s.job_id = j.id), '[]'::jsonb))
    FROM public.generation_get(generation_watch.job_id) j
$$;
REVOKE ALL ON FUNCTION public.generation_watch(uuid) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.generation_watch(uuid) TO authenticated;
