"""Layer 4 (above the proxy): acting on the fleet at run time — registering, removing and
moving backends through the one swap path, and the scaler's background task and webhooks."""
