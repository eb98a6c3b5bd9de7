// layer src/convert
