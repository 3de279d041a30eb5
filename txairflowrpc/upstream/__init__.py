"""
The only way to Airflow.

`client` (Airflow 3's REST API over treq: login, deadlines, retries),
`shapes` (Airflow's documents in the gateway's own shapes), `breaker` (the
circuit breaker in front of Airflow), `watch` (one poll loop per watched run,
shared by its waiters).
"""
