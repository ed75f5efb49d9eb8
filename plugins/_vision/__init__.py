"""Pieces the vision plugins share (not a plugin itself: the leading underscore keeps it out of
discovery): the walker that turns a token grid into a scan's sequences, the scan-aware token
mixers, timm's model conventions and the timm registration."""
