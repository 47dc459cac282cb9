-- The two energy meters on the RS-485 line, one stream each (a stream reads one
-- device's poll group).

CREATE STREAM meter1 (device STRING, timestamp BIGINT, voltage DOUBLE, power_kw DOUBLE,
                      energy_kwh DOUBLE, power_kw_quality STRING)
WITH (TYPE = 'modbus', DATASOURCE = 'meter1/power', TIMESTAMP = 'timestamp', LATENESS = '2s');

CREATE STREAM meter2 (device STRING, timestamp BIGINT, voltage DOUBLE, power_kw DOUBLE,
                      energy_kwh DOUBLE, power_kw_quality STRING)
WITH (TYPE = 'modbus', DATASOURCE = 'meter2/power', TIMESTAMP = 'timestamp', LATENESS = '2s');

-- Per meter and minute: average and peak power, energy used, and how many readings
-- failed (a meter that stops answering shows here before anyone walks to it).
CREATE RULE meter1_1m INTO cloud AS
SELECT device, window_start,
       avg(power_kw) AS power_kw_avg, max(power_kw) AS power_kw_max,
       max(energy_kwh) - min(energy_kwh) AS energy_kwh,
       min(voltage) AS voltage_min,
       count(*) FILTER (WHERE power_kw_quality <> 'ok') AS failed_readings
FROM meter1
GROUP BY device, TUMBLINGWINDOW(mi, 1);

CREATE RULE meter2_1m INTO cloud AS
SELECT device, window_start,
       avg(power_kw) AS power_kw_avg, max(power_kw) AS power_kw_max,
       max(energy_kwh) - min(energy_kwh) AS energy_kwh,
       min(voltage) AS voltage_min,
       count(*) FILTER (WHERE power_kw_quality <> 'ok') AS failed_readings
FROM meter2
GROUP BY device, TUMBLINGWINDOW(mi, 1);
