-- The conformance runs need no rules; one stream keeps the rule set valid.
CREATE STREAM unused (v BIGINT) WITH (DATASOURCE = 'conformance/unused', FORMAT = 'json');
