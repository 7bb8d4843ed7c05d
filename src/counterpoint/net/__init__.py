"""The network side: the WebSocket hub remote agents connect to, its server, the
agent client (``counterpoint agent``) and the tokens that authenticate them."""
