"""The web dashboard (`swiftdeploy dashboard`): an aiohttp server, a live model, a page, no CDN."""
