"""A small gRPC service for the end-to-end gRPC test; stubs are generated at test time."""
