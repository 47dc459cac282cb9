-- The press PLC: its fast group (every 200 ms) and its counters (every 5 s).
-- A Modbus stream reads one poll group; its columns are the group's columns by name:
-- device, group, timestamp (epoch ms), each tag, and each tag's `<tag>_quality`
-- (ok, timeout, exception:<code>, bad_frame, io_error).

CREATE STREAM press_fast (
    device STRING, timestamp BIGINT,
    running BOOLEAN, door_open BOOLEAN, alarm BOOLEAN, oil_low BOOLEAN,
    pressure DOUBLE, pressure_quality STRING,
    ram_pos DOUBLE, motor_temp DOUBLE, motor_temp_quality STRING
) WITH (TYPE = 'modbus', DATASOURCE = 'press1/fast',
        TIMESTAMP = 'timestamp', LATENESS = '1s', IDLE_TIMEOUT = '5s');

CREATE STREAM press_counters (
    device STRING, timestamp BIGINT, strokes BIGINT, good_parts BIGINT, recipe STRING
) WITH (TYPE = 'modbus', DATASOURCE = 'press1/counters', TIMESTAMP = 'timestamp');

-- Ten-second summaries of the press instead of fifty raw rows.
CREATE RULE press_10s INTO cloud AS
SELECT device, window_start, window_end,
       avg(pressure)   AS pressure_avg,
       max(pressure)   AS pressure_max,
       max(motor_temp) AS motor_temp_max,
       count(*) FILTER (WHERE running) * 0.2 AS running_s,
       count(*) FILTER (WHERE pressure_quality <> 'ok') AS bad_readings
FROM press_fast
GROUP BY device, TUMBLINGWINDOW(ss, 10);

-- Alarms and door openings as they happen.
CREATE RULE press_events INTO cloud AS
SELECT device, timestamp, alarm, oil_low, door_open, motor_temp
FROM press_fast
WHERE alarm OR oil_low OR (door_open AND running);

-- Local action: an overheating motor or an open door while running stops the press
-- and lights the lamp, without a round trip to the cloud.
CREATE RULE press_stop INTO press_ctl AS
SELECT true AS stop_req, true AS lamp
FROM press_fast
WHERE running AND (motor_temp > 85 OR door_open);

-- Production counts per minute, with the recipe that ran.
CREATE RULE press_output_1m INTO cloud AS
SELECT device, recipe, window_start,
       max(strokes) - min(strokes)       AS strokes,
       max(good_parts) - min(good_parts) AS good_parts
FROM press_counters
GROUP BY device, recipe, TUMBLINGWINDOW(mi, 1);
