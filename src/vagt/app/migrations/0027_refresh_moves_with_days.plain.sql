-- The refresh snapshot (0019's hourly_refresh) moves on only in a transaction that added the
-- new rows to the days and weeks (0023) as well as to the hours. A vendor report of the
-- release that brought 0019, still running on a host not yet upgraded, adds them to the
-- hours alone, and moved the snapshot past them: device_daily and device_weekly never had
-- them. 0023 stopped 0022's refresh by dropping the tables it wrote; 0019's writes only
-- tables that stay. Now its snapshot's move is refused, which rolls back its whole
-- transaction: the hours it added go too, and the next refresh of an upgraded release adds
-- the rows everywhere. (Migrations are never edited: this follows 0019 and 0023.)
--
-- A refresh of 0023's release or later writes device_daily and device_weekly in every
-- refresh, rows or none (the statements of vagt.app.device_hours; a statement's triggers
-- fire once, whatever it changed): the triggers below mark its transaction, and the
-- snapshot's trigger asks for both marks. The marks are transaction-local settings, gone
-- at its end.
CREATE FUNCTION vagt_refresh_wrote() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('vagt.refresh_wrote_' || TG_TABLE_NAME, 'on', true);
    RETURN NULL;
END
$$;

CREATE TRIGGER device_daily_written AFTER INSERT OR UPDATE ON device_daily
    FOR EACH STATEMENT EXECUTE FUNCTION vagt_refresh_wrote();
CREATE TRIGGER device_weekly_written AFTER INSERT OR UPDATE ON device_weekly
    FOR EACH STATEMENT EXECUTE FUNCTION vagt_refresh_wrote();

CREATE FUNCTION vagt_refresh_moves_with_days() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('vagt.refresh_wrote_device_daily', true) IS DISTINCT FROM 'on'
       OR current_setting('vagt.refresh_wrote_device_weekly', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'the vendor report''s refresh adds new rows to the hourly counts '
                        'but not to device_daily and device_weekly (migration 0023): it is '
                        'of a vagt release before 0023; nothing was added'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'upgrade vagt on this host, or run the report on an upgraded one';
    END IF;
    RETURN NEW;
END
$$;

-- Before the row is written, a new one (the first refresh) or a moved one.
CREATE TRIGGER hourly_refresh_moves_with_days BEFORE INSERT OR UPDATE ON hourly_refresh
    FOR EACH ROW EXECUTE FUNCTION vagt_refresh_moves_with_days();
