"""Layer 5: aiohttp handlers (OpenAI, TGI, admin and operational routes)."""
