"""The local agent: pairs once, keeps the tunnel to the cloud, forwards streams locally.

It never imports server code; it uses :mod:`visiona.yamux`, picows and httpx only.
"""
