"""The embedded HTTP balancer: routes alias and node URLs to Healthy instances."""
