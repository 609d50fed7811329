"""The Open Inference Protocol (KServe V2 REST) server that nodes and the gateway
put in front of their inference service."""
