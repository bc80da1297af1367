"""callpulse's shell around the domain core (streams/): the Faust worker, Kafka, the CLI, the HTTP API."""
