"""What the daemon sees and says: events, logs, metrics, nginx's traffic log, alerts, history."""
