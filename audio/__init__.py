"""Audio helpers shared by the engines (asr, tts) and the call layer (ivr): they depend on nothing above."""
