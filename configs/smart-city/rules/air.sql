-- Air-quality sensors. Each publishes a JSON reading to city/<district>/air/<sensor>:
--   {"sensor": "aq-0117", "district": "harbour", "ts": 1764000000000,
--    "pm25": 12.4, "pm10": 20.1, "no2": 31.0}
-- Concentrations in µg/m³. The topic is not a column, so the payload names its district
-- and sensor. Readings relayed through LoRaWAN may arrive up to 30 s late.

CREATE STREAM air (
    sensor   STRING,
    district STRING,
    ts       BIGINT,
    pm25     DOUBLE,
    pm10     DOUBLE,
    no2      DOUBLE
) WITH (DATASOURCE = 'city/+/air/+', FORMAT = 'json',
        TIMESTAMP = 'ts', TIMESTAMP_FORMAT = 'epoch_ms', LATENESS = '30s');

-- Per district and minute: how many sensors reported, average and peak concentrations.
CREATE RULE air_district_1m INTO cloud, audit AS
SELECT district, window_start, window_end,
       count(DISTINCT sensor) AS sensors,
       count(*)               AS readings,
       avg(pm25)              AS pm25_avg,
       max(pm25)              AS pm25_max,
       avg(pm10)              AS pm10_avg,
       avg(no2)               AS no2_avg,
       max(no2)               AS no2_max
FROM air
GROUP BY district, TUMBLINGWINDOW(mi, 1);

-- A district whose one-minute average passes an alert threshold: PM2.5 above 50,
-- PM10 above 100 or NO2 above 200 µg/m³. Averaging over the district's sensors keeps a
-- single sensor's spike (a bus idling next to it) from raising an alert.
CREATE RULE air_alert INTO cloud, audit AS
SELECT district, window_start, window_end,
       count(DISTINCT sensor) AS sensors,
       avg(pm25) AS pm25_avg, avg(pm10) AS pm10_avg, avg(no2) AS no2_avg,
       concat_ws(',', CASE WHEN avg(pm25) > 50 THEN 'pm25' END,
                      CASE WHEN avg(pm10) > 100 THEN 'pm10' END,
                      CASE WHEN avg(no2) > 200 THEN 'no2' END) AS exceeded
FROM air
GROUP BY district, TUMBLINGWINDOW(mi, 1)
HAVING avg(pm25) > 50 OR avg(pm10) > 100 OR avg(no2) > 200;
