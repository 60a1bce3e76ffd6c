"""The public face: server-rendered pages (`pages`) and funding badges (`badges`)."""
