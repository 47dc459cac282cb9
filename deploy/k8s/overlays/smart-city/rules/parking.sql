-- Parking bay sensors. Each publishes to city/<district>/parking/<sensor> when its bay
-- changes state and every 30 s as a heartbeat:
--   {"sensor": "pk-2231", "district": "station", "ts": 1764000000000,
--    "occupied": true, "battery_v": 3.61}

CREATE STREAM parking (
    sensor    STRING,
    district  STRING,
    ts        BIGINT,
    occupied  BOOLEAN,
    battery_v DOUBLE
) WITH (DATASOURCE = 'city/+/parking/+', FORMAT = 'json',
        TIMESTAMP = 'ts', TIMESTAMP_FORMAT = 'epoch_ms', LATENESS = '30s');

-- Per district and minute: bays reporting and the share of readings that found their bay
-- occupied (with a fixed heartbeat, close to the share of bay-time occupied).
CREATE RULE parking_district_1m INTO cloud, audit AS
SELECT district, window_start, window_end,
       count(DISTINCT sensor) AS bays,
       count(DISTINCT sensor) FILTER (WHERE occupied) AS bays_occupied_seen,
       avg(CASE WHEN occupied THEN 1.0 ELSE 0.0 END) AS occupancy
FROM parking
GROUP BY district, TUMBLINGWINDOW(mi, 1);

-- Sensors whose battery runs low, once per sensor and hour, for the maintenance crew.
CREATE RULE parking_battery_low INTO cloud, audit AS
SELECT sensor, district, window_start, min(battery_v) AS battery_v_min
FROM parking
GROUP BY sensor, district, TUMBLINGWINDOW(hh, 1)
HAVING min(battery_v) < 3.3;
