"""The spec: the desired state read from a repository of YAML documents."""
