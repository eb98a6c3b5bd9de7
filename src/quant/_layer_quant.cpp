// layer src/quant
