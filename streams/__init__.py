"""callpulse domain core: event contract, call sessionizer, KPI engine and windows (no Kafka, no Faust)."""
