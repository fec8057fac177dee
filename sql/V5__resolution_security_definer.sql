-- Resolution at scale. Under RLS the specified policies are OR-ed (user test, tier
-- test, admin test) and auth.uid() is not leakproof, so no index on
-- engine_assignments can serve my_engines() as the invoker: every call scanned all
-- assignments (1.35 s at 200k rows, benches/README.md). As the definer it filters
-- by the caller explicitly, exactly the rows the SELECT policies would show them
-- (their own user assignments and their tier's), and uses the indexes (1.7 ms).
-- Admins still get only the engines assigned to them, as before.
CREATE OR REPLACE FUNCTION public.my_engines() RETURNS SETOF public.engine_choice
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  WITH caller AS (
    SELECT auth.uid() AS uid,
           (SELECT tier FROM public.user_credits WHERE user_id = auth.uid()) AS tier
  ), candidates AS (
    SELECT a.* FROM public.engine_assignments a, caller c
     WHERE a.active AND a.assignment_type = 'user' AND a.user_id = c.uid
    UNION ALL
    SELECT a.* FROM public.engine_assignments a, caller c
     WHERE a.active AND a.assignment_type = 'tier' AND a.tier = c.tier
  ), best AS (
    SELECT DISTINCT ON (a.engine_id) a.*
    FROM candidates a
    ORDER BY a.engine_id, (a.assignment_type = 'user') DESC, a.priority DESC NULLS LAST, a.created_at DESC
  )
  SELECT e.id, e.name, e.description, e.flow_config, e.models, e.execution_mode, e.tier,
         e.created_at, e.updated_at,
         b.id, b.assignment_type, b.priority, b.created_at,
         (row_number() OVER (ORDER BY (b.assignment_type = 'user') DESC, b.priority DESC NULLS LAST,
                                      b.created_at DESC, e.id))::integer
  FROM best b
  JOIN public.ai_engines e ON e.id = b.engine_id AND e.active
  ORDER BY 14
$$;
REVOKE ALL ON FUNCTION public.my_engines() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.my_engines() TO anon, authenticated, service_role;
