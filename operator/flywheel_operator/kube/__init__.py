"""The Kubernetes side of the operator: kopf handlers, the backend that carries out plans, manifests."""
