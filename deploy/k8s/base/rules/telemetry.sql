-- Example rules for the embedded default config.
--
-- Devices publish JSON such as {"device":"dev1","ts":1764000000000,"temp":21.5}
-- to sensors/<device>/telemetry.

CREATE STREAM telemetry (
    device STRING,
    ts     BIGINT,
    temp   DOUBLE
) WITH (
    DATASOURCE       = 'sensors/+/telemetry',
    FORMAT           = 'json',
    TIMESTAMP        = 'ts',
    TIMESTAMP_FORMAT = 'epoch_ms',
    LATENESS         = '2s'
);

-- Every reading above 30 °C, as it arrives.
CREATE RULE hot_readings INTO local AS
SELECT device, ts, temp
FROM telemetry
WHERE temp > 30;

-- Per device and 10-second window: how many readings, their average and maximum.
-- A window is written once the watermark (latest ts seen minus 2 s) passes its end.
CREATE RULE temp_10s INTO local AS
SELECT device,
       window_start,
       window_end,
       count(*)  AS readings,
       avg(temp) AS avg_temp,
       max(temp) AS max_temp
FROM telemetry
GROUP BY device, TUMBLINGWINDOW(ss, 10);
