"""The leaf room: helpers every other room may import (torch global state, ...); it imports no other room."""
