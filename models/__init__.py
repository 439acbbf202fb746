"""Network definitions: pretrained backbones and the classification / box heads (torch)."""
