-- bookengine: wake the worker when a generation is requested.
--
-- Creates an AFTER INSERT trigger on public.generation_jobs that POSTs the shape of a
-- Supabase Database Webhook, with only what the service reads, the job's id:
--   {"type": "INSERT", "table": "generation_jobs", "schema": "public",
--    "record": {"id": "<job id>"}, "old_record": null}
-- (a whole row is up to ~1.1 MiB: the input and the engine snapshot; nothing reads it).
-- to bookengine's POST /webhooks/generation, with `Authorization: Bearer <secret>`
-- (the service's WEBHOOK_SECRET), through pg_net's net.http_post.
--
-- Only where the pg_net extension is installed (Dashboard -> Database -> Extensions ->
-- pg_net, or `create extension pg_net;`); elsewhere it raises a NOTICE and does nothing.
-- Workers also poll, so the webhook only shortens the wait; a lost delivery costs at
-- most one poll interval. Safe to run again. Run it after `bookengine migrate`:
--   psql "$DATABASE_URL" -f supabase/webhook.sql
--
-- The URL and the secret are read when each row is inserted, never written here.
-- Either (recommended on hosted Supabase) in Vault:
--   select vault.create_secret('https://bookengine.example.com/webhooks/generation',
--                              'bookengine_webhook_url');
--   select vault.create_secret('<the WEBHOOK_SECRET of the service>',
--                              'bookengine_webhook_secret');
--   -- change later: select vault.update_secret(id, '<new value>')
--   --   from vault.secrets where name = 'bookengine_webhook_secret';
-- or as database settings (visible to anyone who can run SHOW, so prefer Vault):
--   alter database postgres set app.bookengine_webhook_url = 'https://.../webhooks/generation';
--   alter database postgres set app.bookengine_webhook_secret = '<WEBHOOK_SECRET>';
-- Vault wins when both are set. With neither, inserts still succeed and a WARNING is
-- logged; the workers' polling picks the job up.
--
-- The dashboard equivalent (instead of this file): Database -> Webhooks -> Create a new
-- hook: table public.generation_jobs, events: Insert, type: HTTP Request, method POST,
-- URL https://<your bookengine>/webhooks/generation, HTTP header
-- Authorization = "Bearer <WEBHOOK_SECRET>" (and Content-Type = application/json).
-- Do not use both, or every job is announced twice (harmless, but wasteful).
--
-- To remove: drop trigger if exists bookengine_generation_webhook on public.generation_jobs;
--            drop function if exists bookengine.generation_webhook();

DO $install$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_net') THEN
    RAISE NOTICE 'bookengine webhook: the pg_net extension is not installed; no trigger created '
      '(install pg_net and run this file again, or create the webhook in the dashboard; '
      'workers poll either way)';
    RETURN;
  END IF;
  IF pg_catalog.to_regclass('public.generation_jobs') IS NULL THEN
    RAISE NOTICE 'bookengine webhook: public.generation_jobs does not exist yet; run `bookengine migrate` first';
    RETURN;
  END IF;

  CREATE SCHEMA IF NOT EXISTS bookengine;

  -- SECURITY DEFINER: the row is inserted by the requesting user (role authenticated),
  -- who may neither read Vault nor call pg_net; this function, owned by the role that
  -- runs this file, may. Its search_path is empty, so every name is qualified.
  CREATE OR REPLACE FUNCTION bookengine.generation_webhook() RETURNS trigger
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $fn$
  DECLARE
    url text;
    secret text;
  BEGIN
    IF pg_catalog.to_regclass('vault.decrypted_secrets') IS NOT NULL THEN
      BEGIN
        EXECUTE 'SELECT max(decrypted_secret) FILTER (WHERE name = ''bookengine_webhook_url''),
                        max(decrypted_secret) FILTER (WHERE name = ''bookengine_webhook_secret'')
                   FROM vault.decrypted_secrets
                  WHERE name IN (''bookengine_webhook_url'', ''bookengine_webhook_secret'')'
          INTO url, secret;
      EXCEPTION WHEN insufficient_privilege OR undefined_table OR undefined_column THEN
        url := NULL;
        secret := NULL;
      END;
    END IF;
    url := coalesce(nullif(url, ''), nullif(pg_catalog.current_setting('app.bookengine_webhook_url', true), ''));
    secret := coalesce(nullif(secret, ''), nullif(pg_catalog.current_setting('app.bookengine_webhook_secret', true), ''));
    IF url IS NULL OR secret IS NULL THEN
      RAISE WARNING 'bookengine webhook: set the Vault secrets bookengine_webhook_url and '
        'bookengine_webhook_secret (or app.bookengine_webhook_url / app.bookengine_webhook_secret); '
        'job % will wait for a worker''s poll', NEW.id;
      RETURN NEW;
    END IF;
    -- pg_net queues the request and sends it after the transaction commits.
    PERFORM net.http_post(
      url := url,
      body := pg_catalog.jsonb_build_object(
        'type', 'INSERT',
        'table', TG_TABLE_NAME,
        'schema', TG_TABLE_SCHEMA,
        'record', pg_catalog.jsonb_build_object('id', NEW.id),
        'old_record', NULL),
      headers := pg_catalog.jsonb_build_object(
        'Content-Type', 'application/json',
        'Authorization', 'Bearer ' || secret),
      timeout_milliseconds := 5000);
    RETURN NEW;
  END
  $fn$;

  REVOKE ALL ON FUNCTION bookengine.generation_webhook() FROM PUBLIC;

  DROP TRIGGER IF EXISTS bookengine_generation_webhook ON public.generation_jobs;
  CREATE TRIGGER bookengine_generation_webhook
    AFTER INSERT ON public.generation_jobs
    FOR EACH ROW EXECUTE FUNCTION bookengine.generation_webhook();

  RAISE NOTICE 'bookengine webhook: trigger bookengine_generation_webhook created on public.generation_jobs';
END
$install$;
