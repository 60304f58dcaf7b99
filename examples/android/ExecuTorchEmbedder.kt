// all-MiniLM-L6-v2 sentence embeddings with ExecuTorch (bundle: model.pte, XNNPACK, int64 inputs [1, 128]).
// Gradle: implementation("org.pytorch:executorch-android:1.5.1")
package com.example.edgeopt

import android.content.Context
import java.io.File
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

class ExecuTorchEmbedder(context: Context, asset: String = "model.pte", threads: Int = 4) : AutoCloseable {
    private val module: Module

    init {
        // Module.load takes a file path (it memory-maps the program): copy the asset out once.
        val file = File(context.filesDir, asset)
        if (!file.exists()) {
            context.assets.open(asset).use { input -> file.outputStream().use { input.copyTo(it) } }
        }
        module = Module.load(file.absolutePath, Module.LOAD_MODE_MMAP, threads)  // 0: the runtime's default
        module.loadMethod("forward")  // pay the load (XNNPACK weight packing) here, not on the first embed()
    }

    /** A .pte has no input names: inputs go in manifest order (input_ids, attention_mask, token_type_ids). */
    fun embed(inputIds: LongArray, attentionMask: LongArray, tokenTypeIds: LongArray): FloatArray {
        val shape = longArrayOf(1, SEQ_LEN.toLong())
        val outputs = module.forward(
            EValue.from(Tensor.fromBlob(inputIds, shape)),        // input_ids
            EValue.from(Tensor.fromBlob(attentionMask, shape)),   // attention_mask
            EValue.from(Tensor.fromBlob(tokenTypeIds, shape)),    // token_type_ids
        )
        // outputs in export order: [0] sentence_embedding float32 [1, 384], [1] last_hidden_state [1, 128, 384]
        return outputs[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()

    companion object {
        const val SEQ_LEN = 128
        const val DIM = 384
    }
}
