-- A citizen reference with a CPR number in it written with another separator than '-' or a
-- space ('010190.1234', 'cit:010190:1234', '010190–1234'), or glued to 'cpr'
-- ('cpr0101901234'), passed both vagt and the CHECK of 0003. Both now refuse what
-- vagt.devices.privacy calls CPR-shaped: DDMMYY (day 01-31, month 01-12; the date's own
-- separators, if any, the same twice), a separator or none, four digits, as a word of its
-- own. Keep the pattern here and the one in privacy.py the same: the database must never
-- refuse what vagt lets through (it would fail with a bare check violation).
--
-- Such a reference already stored is removed, not kept: vagt never stores a CPR number. The
-- assignment keeps its device, municipality and dates; the citizen becomes 'removed-n' and
-- the assignment's id (a letter before the digits: never CPR-shaped), in the assignment
-- and in the audit rows that copied it; an audit row per assignment says so
-- (`devices.citizen_ref_removed`), for the service centre to set the reference again.
-- A run of digits that follows a number and a dot is the end of an IPv4 address, not one.
UPDATE audit_log a SET details = jsonb_set(a.details, '{citizen_ref}',
                                           to_jsonb('removed-n' || d.id))
FROM device_assignments d
WHERE a.action LIKE 'devices.%' AND a.subject = d.device_id
  AND a.details->>'citizen_ref' = d.citizen_ref
  AND d.citizen_ref ~* '(^|[^[:alnum:].]|(?<![0-9])[.]|cpr|nr)(0[1-9]|[12][0-9]|3[01])([-\u2010\u2011\u2012\u2013\u2014\u2212._:/ \u00a0]?)(0[1-9]|1[0-2])\3[0-9]{2}[ \u00a0]?([-\u2010\u2011\u2012\u2013\u2014\u2212._:/][ \u00a0]?)?[0-9]{4}($|[^[:alnum:]])';

-- Which devices' citizens lost their reference, for the service centre to set it again.
INSERT INTO audit_log (actor, action, subject, details)
SELECT 'vagt', 'devices.citizen_ref_removed', device_id,
       jsonb_build_object('assignment', id, 'citizen_ref', 'removed-n' || id,
                          'note', 'the reference held something shaped like a CPR number '
                                  || '(migration 0017): set the citizen''s pseudonymous '
                                  || 'reference again')
FROM device_assignments
WHERE citizen_ref ~* '(^|[^[:alnum:].]|(?<![0-9])[.]|cpr|nr)(0[1-9]|[12][0-9]|3[01])([-\u2010\u2011\u2012\u2013\u2014\u2212._:/ \u00a0]?)(0[1-9]|1[0-2])\3[0-9]{2}[ \u00a0]?([-\u2010\u2011\u2012\u2013\u2014\u2212._:/][ \u00a0]?)?[0-9]{4}($|[^[:alnum:]])';

UPDATE device_assignments SET citizen_ref = 'removed-n' || id
WHERE citizen_ref ~* '(^|[^[:alnum:].]|(?<![0-9])[.]|cpr|nr)(0[1-9]|[12][0-9]|3[01])([-\u2010\u2011\u2012\u2013\u2014\u2212._:/ \u00a0]?)(0[1-9]|1[0-2])\3[0-9]{2}[ \u00a0]?([-\u2010\u2011\u2012\u2013\u2014\u2212._:/][ \u00a0]?)?[0-9]{4}($|[^[:alnum:]])';

ALTER TABLE device_assignments DROP CONSTRAINT device_assignments_citizen_ref_check;
ALTER TABLE device_assignments ADD CONSTRAINT device_assignments_citizen_ref_check
    CHECK (citizen_ref !~* '(^|[^[:alnum:].]|(?<![0-9])[.]|cpr|nr)(0[1-9]|[12][0-9]|3[01])([-\u2010\u2011\u2012\u2013\u2014\u2212._:/ \u00a0]?)(0[1-9]|1[0-2])\3[0-9]{2}[ \u00a0]?([-\u2010\u2011\u2012\u2013\u2014\u2212._:/][ \u00a0]?)?[0-9]{4}($|[^[:alnum:]])');
