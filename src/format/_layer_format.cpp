// layer src/format
