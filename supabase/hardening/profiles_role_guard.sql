-- bookengine hardening (opt-in): only the service role or an existing admin may change
-- public.profiles.role.
--
-- Why: the specified admin policies on ai_engines and engine_assignments trust
-- `profiles.role = 'admin'`. Many Supabase projects let users edit their own profile
-- (the starter policy "Users can update own profile": FOR UPDATE USING (auth.uid() = id),
-- plus the UPDATE privilege hosted projects grant by default), and then
--   PATCH /rest/v1/profiles?id=eq.<me>  {"role": "admin"}
-- makes any user an admin of every engine, assignment and job. This trigger refuses that
-- while leaving the rest of the profile editable as before.
--
-- What it refuses, for requests made through the Data API (PostgREST) as anon or
-- authenticated, including through SECURITY DEFINER functions they call:
--   * an UPDATE that changes role;
--   * an INSERT with a privileged role (the list below: 'admin').
-- Allowed: requests as service_role; a signed-in user whose own profile is 'admin';
-- direct database connections (migrations, the SQL editor, Supabase Auth's own hooks),
-- which carry no JWT claims.
-- The refusal is SQLSTATE 42501 (insufficient_privilege), which PostgREST answers with 403:
--   only an admin or the service role may change profiles.role
--
-- Apply (safe to run again; `bookengine doctor` then stops reporting profiles_role_writable):
--   psql "$DATABASE_URL" -f supabase/hardening/profiles_role_guard.sql
-- Remove:
--   DROP TRIGGER IF EXISTS bookengine_profiles_role_guard ON public.profiles;
--   DROP FUNCTION IF EXISTS bookengine.profiles_role_guard();

BEGIN;

CREATE SCHEMA IF NOT EXISTS bookengine;

-- SECURITY DEFINER so that it can read the caller's own profile whatever its RLS says;
-- an empty search_path so that every name is the one written here.
CREATE OR REPLACE FUNCTION bookengine.profiles_role_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $guard$
DECLARE
  -- Roles an INSERT may not grant itself. Add your app's other privileged roles here.
  privileged constant text[] := ARRAY['admin'];
  claims jsonb;
  api_role text;
  caller uuid;
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.role IS NOT DISTINCT FROM OLD.role THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'INSERT' AND NOT (NEW.role::text = ANY (privileged)) THEN
    RETURN NEW;
  END IF;

  -- The role the request runs as: PostgREST sets it per request (SET LOCAL ROLE), and a
  -- SECURITY DEFINER function changes current_user but not this setting.
  api_role := pg_catalog.current_setting('role', true);
  BEGIN
    claims := nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb;
  EXCEPTION WHEN others THEN
    claims := '{}'::jsonb; -- unreadable claims are a request, and not a trusted one
  END;

  IF claims IS NULL AND api_role IS DISTINCT FROM 'anon' AND api_role IS DISTINCT FROM 'authenticated' THEN
    RETURN NEW; -- a direct database connection, not a Data API request
  END IF;
  IF api_role = 'service_role' THEN
    RETURN NEW;
  END IF;

  caller := nullif(coalesce(claims ->> 'sub', pg_catalog.current_setting('request.jwt.claim.sub', true)), '')::uuid;
  IF caller IS NOT NULL
     AND EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = caller AND p.role::text = 'admin') THEN
    RETURN NEW;
  END IF;

  RAISE EXCEPTION 'only an admin or the service role may change profiles.role'
    USING ERRCODE = '42501',
          DETAIL = 'profile_role_change_refused',
          HINT = 'Ask an administrator; see supabase/hardening/README.md.';
END
$guard$;

REVOKE ALL ON FUNCTION bookengine.profiles_role_guard() FROM PUBLIC;

DROP TRIGGER IF EXISTS bookengine_profiles_role_guard ON public.profiles;
CREATE TRIGGER bookengine_profiles_role_guard
  BEFORE INSERT OR UPDATE ON public.profiles
  FOR EACH ROW EXECUTE FUNCTION bookengine.profiles_role_guard();

COMMIT;
