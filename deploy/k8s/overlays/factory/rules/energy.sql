-- The energy meters on the RS-485 line: one stream reads the `power` group of every
-- meter (`+/power`), the meter in the `device` column.

CREATE STREAM meters (device STRING, timestamp BIGINT, voltage DOUBLE, power_kw DOUBLE,
                      energy_kwh DOUBLE, power_kw_quality STRING)
WITH (TYPE = 'modbus', DATASOURCE = '+/power', TIMESTAMP = 'timestamp', LATENESS = '2s');

-- Per meter and minute: average and peak power, energy used, and how many readings
-- failed (a meter that stops answering shows here before anyone walks to it).
CREATE RULE meters_1m INTO cloud AS
SELECT device, window_start,
       avg(power_kw) AS power_kw_avg, max(power_kw) AS power_kw_max,
       max(energy_kwh) - min(energy_kwh) AS energy_kwh,
       min(voltage) AS voltage_min,
       count(*) FILTER (WHERE power_kw_quality <> 'ok') AS failed_readings
FROM meters
GROUP BY device, TUMBLINGWINDOW(mi, 1);
