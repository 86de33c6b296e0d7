"""HL7 v2 messages: the worklist flag (ORU^R01) of a positive study."""
