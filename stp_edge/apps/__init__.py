"""Camera apps: events, zones, sinks (MQTT, webhooks), clips, a deployment config, a GStreamer element, a service."""
