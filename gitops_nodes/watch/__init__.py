"""`gitops-nodes watch`: follow the repo, reconcile on change and on drift."""
