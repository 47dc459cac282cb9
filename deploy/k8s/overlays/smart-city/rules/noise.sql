-- Noise monitors. Each publishes a JSON reading to city/<district>/noise/<sensor> every
-- few seconds:
--   {"sensor": "nm-031", "district": "old-town", "ts": 1764000000000,
--    "laeq": 61.2, "lamax": 74.9}
-- laeq: A-weighted equivalent level over the reporting interval, lamax: its peak, in dB(A).

CREATE STREAM noise (
    sensor   STRING,
    district STRING,
    ts       BIGINT,
    laeq     DOUBLE,
    lamax    DOUBLE
) WITH (DATASOURCE = 'city/+/noise/+', FORMAT = 'json',
        TIMESTAMP = 'ts', TIMESTAMP_FORMAT = 'epoch_ms', LATENESS = '30s');

-- Per district and minute. Decibels are logarithmic: the equivalent level of several
-- readings is the level of their average sound energy, not the average of the levels.
CREATE RULE noise_district_1m INTO cloud, audit AS
SELECT district, window_start, window_end,
       count(DISTINCT sensor)                       AS sensors,
       10 * log10(avg(power(10.0, laeq / 10.0)))    AS laeq_1m,
       max(lamax)                                   AS lamax_1m
FROM noise
GROUP BY district, TUMBLINGWINDOW(mi, 1);

-- A sensor whose one-minute equivalent level passes 85 dB(A): sustained noise, not a
-- passing siren.
CREATE RULE noise_alert INTO cloud, audit AS
SELECT sensor, district, window_start, window_end,
       10 * log10(avg(power(10.0, laeq / 10.0))) AS laeq_1m,
       max(lamax)                                AS lamax_1m
FROM noise
GROUP BY sensor, district, TUMBLINGWINDOW(mi, 1)
HAVING 10 * log10(avg(power(10.0, laeq / 10.0))) > 85;
